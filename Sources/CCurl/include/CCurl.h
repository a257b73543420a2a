// Typed wrappers over libcurl's variadic entry points.
//
// `curl_easy_setopt`, `curl_multi_setopt` and `curl_easy_getinfo` are C
// variadic functions, which Swift cannot call. Each wrapper below fixes the
// argument type so the Swift layer (ConsentSyncHTTP, the only importer of this
// module) can call them safely, the way swift-corelibs-foundation does in
// CFURLSessionInterface.c.
#pragma once

#include <curl/curl.h>

#ifdef __cplusplus
extern "C" {
#endif

/// `curl_global_init(CURL_GLOBAL_ALL)`; the macro is not importable.
CURLcode ccurl_global_init_all(void);

// MARK: - curl_easy_setopt, one per argument type

CURLcode ccurl_easy_setopt_long(CURL *handle, CURLoption option, long value);
CURLcode ccurl_easy_setopt_string(CURL *handle, CURLoption option, const char *value);
CURLcode ccurl_easy_setopt_pointer(CURL *handle, CURLoption option, void *value);
CURLcode ccurl_easy_setopt_slist(CURL *handle, CURLoption option, struct curl_slist *value);
CURLcode ccurl_easy_setopt_off_t(CURL *handle, CURLoption option, curl_off_t value);

/// Signature shared by CURLOPT_WRITEFUNCTION and CURLOPT_HEADERFUNCTION.
typedef size_t (*ccurl_data_callback)(char *data, size_t size, size_t count, void *userdata);

CURLcode ccurl_easy_setopt_write_function(CURL *handle, ccurl_data_callback callback);
CURLcode ccurl_easy_setopt_header_function(CURL *handle, ccurl_data_callback callback);

/// Installs CURLOPT_OPENSOCKETFUNCTION and CURLOPT_PREREQFUNCTION callbacks
/// that refuse loopback, private, link-local, unique-local, multicast and
/// reserved addresses (IPv4, IPv6 and IPv4-mapped/NAT64 IPv6). Checking at
/// connect time, on the address actually used, also defeats DNS rebinding.
/// When a connection is refused, `*blocked` is set to 1 (it must outlive the
/// easy handle's transfers).
CURLcode ccurl_easy_set_address_guard(CURL *handle, int *blocked);

/// 1 when `text` is a numeric IPv4/IPv6 address in a refused range, else 0.
/// Exposed for unit tests.
int ccurl_address_is_refused(const char *text);

// MARK: - curl_easy_getinfo

CURLcode ccurl_easy_getinfo_long(CURL *handle, CURLINFO info, long *value);
CURLcode ccurl_easy_getinfo_off_t(CURL *handle, CURLINFO info, curl_off_t *value);

// MARK: - multi interface

CURLMcode ccurl_multi_setopt_long(CURLM *multi, CURLMoption option, long value);

/// Reads the next CURLMSG_DONE message, skipping others. Returns 1 and fills
/// `easy` and `result` when there was one, 0 when the queue is empty. Hides
/// the `CURLMsg.data` union from Swift.
int ccurl_multi_next_done(CURLM *multi, CURL **easy, CURLcode *result);

#ifdef __cplusplus
}
#endif
