#include "CCurl.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

CURLcode ccurl_global_init_all(void) {
    return curl_global_init(CURL_GLOBAL_ALL);
}

CURLcode ccurl_easy_setopt_long(CURL *handle, CURLoption option, long value) {
    return curl_easy_setopt(handle, option, value);
}

CURLcode ccurl_easy_setopt_string(CURL *handle, CURLoption option, const char *value) {
    return curl_easy_setopt(handle, option, value);
}

CURLcode ccurl_easy_setopt_pointer(CURL *handle, CURLoption option, void *value) {
    return curl_easy_setopt(handle, option, value);
}

CURLcode ccurl_easy_setopt_slist(CURL *handle, CURLoption option, struct curl_slist *value) {
    return curl_easy_setopt(handle, option, value);
}

CURLcode ccurl_easy_setopt_off_t(CURL *handle, CURLoption option, curl_off_t value) {
    return curl_easy_setopt(handle, option, value);
}

CURLcode ccurl_easy_setopt_write_function(CURL *handle, ccurl_data_callback callback) {
    return curl_easy_setopt(handle, CURLOPT_WRITEFUNCTION, callback);
}

CURLcode ccurl_easy_setopt_header_function(CURL *handle, ccurl_data_callback callback) {
    return curl_easy_setopt(handle, CURLOPT_HEADERFUNCTION, callback);
}

CURLcode ccurl_easy_getinfo_long(CURL *handle, CURLINFO info, long *value) {
    return curl_easy_getinfo(handle, info, value);
}

CURLcode ccurl_easy_getinfo_off_t(CURL *handle, CURLINFO info, curl_off_t *value) {
    return curl_easy_getinfo(handle, info, value);
}

CURLMcode ccurl_multi_setopt_long(CURLM *multi, CURLMoption option, long value) {
    return curl_multi_setopt(multi, option, value);
}

int ccurl_multi_next_done(CURLM *multi, CURL **easy, CURLcode *result) {
    int remaining = 0;
    CURLMsg *message;
    while ((message = curl_multi_info_read(multi, &remaining)) != NULL) {
        if (message->msg == CURLMSG_DONE) {
            *easy = message->easy_handle;
            *result = message->data.result;
            return 1;
        }
    }
    return 0;
}

// MARK: - address guard

static int ipv4_is_refused(const unsigned char a[4]) {
    if (a[0] == 0) return 1;                                   // 0.0.0.0/8 "this network"
    if (a[0] == 10) return 1;                                  // 10/8 private
    if (a[0] == 100 && (a[1] & 0xC0) == 64) return 1;          // 100.64/10 carrier-grade NAT
    if (a[0] == 127) return 1;                                 // loopback
    if (a[0] == 169 && a[1] == 254) return 1;                  // link-local, cloud metadata
    if (a[0] == 172 && (a[1] & 0xF0) == 16) return 1;          // 172.16/12 private
    if (a[0] == 192 && a[1] == 0 && a[2] == 0) return 1;       // 192.0.0/24 IETF protocol assignments
    if (a[0] == 192 && a[1] == 168) return 1;                  // 192.168/16 private
    if (a[0] == 198 && (a[1] & 0xFE) == 18) return 1;          // 198.18/15 benchmarking
    if (a[0] >= 224) return 1;                                 // multicast, reserved, broadcast
    return 0;
}

static int ipv6_is_refused(const unsigned char a[16]) {
    static const unsigned char mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF};
    static const unsigned char nat64_prefix[12] = {0x00, 0x64, 0xFF, 0x9B, 0, 0, 0, 0, 0, 0, 0, 0};
    static const unsigned char zero[16] = {0};
    if (memcmp(a, mapped_prefix, 12) == 0) return ipv4_is_refused(a + 12);   // ::ffff:a.b.c.d
    if (memcmp(a, nat64_prefix, 12) == 0) return ipv4_is_refused(a + 12);    // 64:ff9b::a.b.c.d
    if (memcmp(a, zero, 15) == 0 && (a[15] == 0 || a[15] == 1)) return 1;    // :: and ::1
    if (memcmp(a, zero, 12) == 0) return 1;                                  // deprecated IPv4-compatible
    if ((a[0] & 0xFE) == 0xFC) return 1;                                     // fc00::/7 unique local
    if (a[0] == 0xFE && (a[1] & 0xC0) == 0x80) return 1;                     // fe80::/10 link-local
    if (a[0] == 0xFE && (a[1] & 0xC0) == 0xC0) return 1;                     // fec0::/10 site-local
    if (a[0] == 0xFF) return 1;                                              // multicast
    if (a[0] == 0x20 && a[1] == 0x02) return ipv4_is_refused(a + 2);         // 2002::/16 6to4
    return 0;
}

static int sockaddr_is_refused(const struct sockaddr *address) {
    switch (address->sa_family) {
    case AF_INET:
        return ipv4_is_refused((const unsigned char *)&((const struct sockaddr_in *)address)->sin_addr);
    case AF_INET6:
        return ipv6_is_refused(((const struct sockaddr_in6 *)address)->sin6_addr.s6_addr);
    default:
        return 1; // unix sockets and anything else have no business in a webhook
    }
}

int ccurl_address_is_refused(const char *text) {
    unsigned char bytes[16];
    if (inet_pton(AF_INET, text, bytes) == 1) return ipv4_is_refused(bytes);
    if (inet_pton(AF_INET6, text, bytes) == 1) return ipv6_is_refused(bytes);
    return 1; // not a numeric address: refuse rather than guess
}

static curl_socket_t guarded_open_socket(void *clientp, curlsocktype purpose, struct curl_sockaddr *address) {
    (void)purpose;
    if (sockaddr_is_refused(&address->addr)) {
        *(int *)clientp = 1;
        return CURL_SOCKET_BAD; // curl fails the attempt with CURLE_COULDNT_CONNECT
    }
    return socket(address->family, address->socktype | SOCK_CLOEXEC, address->protocol);
}

static int guarded_prereq(void *clientp, char *primary_ip, char *local_ip, int primary_port, int local_port) {
    (void)local_ip;
    (void)primary_port;
    (void)local_port;
    // Runs before every request, on new and reused connections alike, so the
    // address check holds even for a connection taken from the shared cache.
    if (ccurl_address_is_refused(primary_ip)) {
        *(int *)clientp = 1;
        return CURL_PREREQFUNC_ABORT; // curl fails with CURLE_ABORTED_BY_CALLBACK
    }
    return CURL_PREREQFUNC_OK;
}

CURLcode ccurl_easy_set_address_guard(CURL *handle, int *blocked) {
    CURLcode code;
    if ((code = curl_easy_setopt(handle, CURLOPT_OPENSOCKETFUNCTION, guarded_open_socket)) != CURLE_OK) return code;
    if ((code = curl_easy_setopt(handle, CURLOPT_OPENSOCKETDATA, (void *)blocked)) != CURLE_OK) return code;
    if ((code = curl_easy_setopt(handle, CURLOPT_PREREQFUNCTION, guarded_prereq)) != CURLE_OK) return code;
    return curl_easy_setopt(handle, CURLOPT_PREREQDATA, (void *)blocked);
}
