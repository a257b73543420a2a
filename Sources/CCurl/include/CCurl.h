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

/// Signature of CURLOPT_OPENSOCKETFUNCTION (`curl_opensocket_callback`).
typedef curl_socket_t (*ccurl_opensocket_callback)(void *clientp, curlsocktype purpose, struct curl_sockaddr *address);

/// Signature of CURLOPT_PREREQFUNCTION (`curl_prereq_callback`, libcurl >= 7.80).
typedef int (*ccurl_prereq_callback)(void *clientp, char *conn_primary_ip, char *conn_local_ip,
                                     int conn_primary_port, int conn_local_port);

CURLcode ccurl_easy_setopt_opensocket_function(CURL *handle, ccurl_opensocket_callback callback);
CURLcode ccurl_easy_setopt_prereq_function(CURL *handle, ccurl_prereq_callback callback);

/// Copies the IP address of `address` into `bytes` in network order and
/// returns its length: 4 (IPv4), 16 (IPv6), or 0 for any other family.
///
/// `address->addr` is declared as a `struct sockaddr` but libcurl stores the
/// whole `sockaddr_in6` there, which Swift cannot see through the declared type.
int ccurl_sockaddr_ip(const struct curl_sockaddr *address, unsigned char bytes[16]);

/// What libcurl itself does when no open-socket callback is set:
/// `socket(family, socktype, protocol)`, here with `SOCK_CLOEXEC`.
curl_socket_t ccurl_open_socket(const struct curl_sockaddr *address);

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
