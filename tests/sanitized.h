/* T_SANITIZED: 1 when built with AddressSanitizer or ThreadSanitizer, where everything runs
 * several times slower; tests shrink their work and stretch their deadlines by it. */
#ifndef PD_TESTS_SANITIZED_H
#define PD_TESTS_SANITIZED_H

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define T_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define T_SANITIZED 1
#endif
#endif
#ifndef T_SANITIZED
#define T_SANITIZED 0
#endif

#endif
