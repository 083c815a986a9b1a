"""The call pipeline, once for whole and streamed, sync and async calls: resolve, validate, cache,
rate limit, attempts (retries and fallbacks within the deadline), the response."""
