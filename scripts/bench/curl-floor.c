/*
 * curl-floor: what libcurl and the kernel alone cost per webhook request on this machine.
 *
 * The benchmark's "sender alone" scenario (scripts/bench/bench.py, scenario "curl") builds this
 * with `cc -O2 curl-floor.c -lcurl` and runs it against the same nginx receivers as a drain.
 * It sends POST requests shaped like consent-sync's (a JSON body of the same size, the same
 * headers) through one curl multi handle, keeping `--in-flight` requests open per URL on
 * kept-alive connections, and prints one JSON line: requests, seconds, and the process's own
 * CPU (user and system, getrusage) per request. Nothing else runs in the process: no database,
 * no signing, no bookkeeping, so the figure is a floor for the daemon's CPU per delivery.
 *
 * --mode reuse: each easy handle is configured once; a request changes only its headers.
 * --mode reset: curl_easy_reset and every option again for each request, as the daemon does
 *               (it hands a handle from one subscriber's request to another's).
 *
 * A bench tool, not part of consent-sync: the daemon's own libcurl code is in Sources/CCurl
 * and Sources/ConsentSyncHTTP.
 */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#define MAX_URLS 64

struct slot {
    CURL *easy;
    struct curl_slist *headers;
    int url;
};

static char body[4096];
static size_t body_length = 600;
static const char *urls[MAX_URLS];
static int url_count = 0;
static int reset_each = 0;
static unsigned long long next_id = 0;

static size_t discard(char *data, size_t size, size_t count, void *user) {
    (void)data;
    (void)user;
    return size * count;
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_seconds(void) {
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return (double)usage.ru_utime.tv_sec + (double)usage.ru_utime.tv_usec / 1e6 + (double)usage.ru_stime.tv_sec +
           (double)usage.ru_stime.tv_usec / 1e6;
}

static void check(CURLcode code, const char *what) {
    if (code != CURLE_OK) {
        fprintf(stderr, "curl-floor: %s: %s\n", what, curl_easy_strerror(code));
        exit(1);
    }
}

/* The options every request needs; once per handle in reuse mode, per request in reset mode. */
static void configure(struct slot *slot) {
    CURL *easy = slot->easy;
    check(curl_easy_setopt(easy, CURLOPT_PRIVATE, slot), "PRIVATE");
    check(curl_easy_setopt(easy, CURLOPT_URL, urls[slot->url]), "URL");
    check(curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https"), "PROTOCOLS_STR");
    check(curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L), "NOSIGNAL");
    check(curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, 30000L), "TIMEOUT_MS");
    check(curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, 10000L), "CONNECTTIMEOUT_MS");
    check(curl_easy_setopt(easy, CURLOPT_PROXY, ""), "PROXY");
    check(curl_easy_setopt(easy, CURLOPT_NOPROXY, "*"), "NOPROXY");
    check(curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, discard), "WRITEFUNCTION");
    check(curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, discard), "HEADERFUNCTION");
    check(curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_length), "POSTFIELDSIZE_LARGE");
    check(curl_easy_setopt(easy, CURLOPT_POSTFIELDS, body), "POSTFIELDS");
}

/* The headers of one request, as consent-sync sends them (a new webhook-id each time). */
static void set_headers(struct slot *slot) {
    char line[256];
    curl_slist_free_all(slot->headers);
    slot->headers = NULL;
    slot->headers = curl_slist_append(slot->headers, "Expect:");
    slot->headers = curl_slist_append(slot->headers, "content-type: application/cloudevents+json");
    slot->headers = curl_slist_append(slot->headers, "user-agent: consent-sync/0.1.0");
    snprintf(line, sizeof line, "webhook-id: msg_floor_%llu", ++next_id);
    slot->headers = curl_slist_append(slot->headers, line);
    snprintf(line, sizeof line, "webhook-timestamp: %lld", (long long)time(NULL));
    slot->headers = curl_slist_append(slot->headers, line);
    slot->headers =
        curl_slist_append(slot->headers, "webhook-signature: v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=");
    if (slot->headers == NULL) {
        fprintf(stderr, "curl-floor: out of memory\n");
        exit(1);
    }
    check(curl_easy_setopt(slot->easy, CURLOPT_HTTPHEADER, slot->headers), "HTTPHEADER");
}

static void start(CURLM *multi, struct slot *slot) {
    if (reset_each) {
        curl_easy_reset(slot->easy);
        configure(slot);
    }
    set_headers(slot);
    CURLMcode code = curl_multi_add_handle(multi, slot->easy);
    if (code != CURLM_OK) {
        fprintf(stderr, "curl-floor: curl_multi_add_handle: %s\n", curl_multi_strerror(code));
        exit(1);
    }
}

static void usage(void) {
    fprintf(stderr, "usage: curl-floor --requests N --in-flight N [--mode reuse|reset] [--body-bytes N] URL...\n");
    exit(2);
}

int main(int argc, char **argv) {
    long requests = 100000, in_flight = 64;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--requests") && i + 1 < argc) {
            requests = atol(argv[++i]);
        } else if (!strcmp(argv[i], "--in-flight") && i + 1 < argc) {
            in_flight = atol(argv[++i]);
        } else if (!strcmp(argv[i], "--body-bytes") && i + 1 < argc) {
            body_length = (size_t)atol(argv[++i]);
        } else if (!strcmp(argv[i], "--mode") && i + 1 < argc) {
            i++;
            if (!strcmp(argv[i], "reset")) {
                reset_each = 1;
            } else if (strcmp(argv[i], "reuse")) {
                usage();
            }
        } else if (!strncmp(argv[i], "--", 2) || url_count == MAX_URLS) {
            usage();
        } else {
            urls[url_count++] = argv[i];
        }
    }
    if (url_count == 0 || requests <= 0 || in_flight <= 0 || body_length >= sizeof body) {
        usage();
    }
    /* A JSON body of the requested size. */
    int prefix = snprintf(body, sizeof body, "{\"specversion\":\"1.0\",\"type\":\"consent.granted\",\"data\":\"");
    memset(body + prefix, 'x', body_length - (size_t)prefix - 2);
    memcpy(body + body_length - 2, "\"}", 2);

    check(curl_global_init(CURL_GLOBAL_ALL), "curl_global_init");
    CURLM *multi = curl_multi_init();
    long slots = in_flight * url_count;
    struct slot *all = calloc((size_t)slots, sizeof *all);
    if (multi == NULL || all == NULL) {
        fprintf(stderr, "curl-floor: out of memory\n");
        return 1;
    }
    long started = 0, done = 0, failed = 0;
    /* Warm up: one request per slot opens its connection; not measured. */
    for (long i = 0; i < slots; i++) {
        all[i].easy = curl_easy_init();
        all[i].url = (int)(i % url_count);
        configure(&all[i]);
    }
    double wall0 = 0, cpu0 = 0;
    int warm = 1;
    long warm_done = 0;
    for (long i = 0; i < slots; i++) {
        start(multi, &all[i]);
    }
    while (done < requests) {
        int running = 0;
        curl_multi_perform(multi, &running);
        CURLMsg *message;
        int left;
        while ((message = curl_multi_info_read(multi, &left)) != NULL) {
            if (message->msg != CURLMSG_DONE) {
                continue;
            }
            struct slot *slot;
            curl_easy_getinfo(message->easy_handle, CURLINFO_PRIVATE, (char **)&slot);
            long status = 0;
            curl_easy_getinfo(message->easy_handle, CURLINFO_RESPONSE_CODE, &status);
            CURLcode result = message->data.result;
            curl_multi_remove_handle(multi, slot->easy);
            if (result != CURLE_OK || status < 200 || status > 299) {
                failed++;
                fprintf(stderr, "curl-floor: %s: %s, status %ld\n", urls[slot->url], curl_easy_strerror(result), status);
                if (failed > 10) {
                    return 1;
                }
            }
            if (warm) {
                if (++warm_done == slots) {
                    warm = 0;
                    wall0 = now_seconds();
                    cpu0 = cpu_seconds();
                }
                start(multi, slot);
                continue;
            }
            done++;
            if (started < requests - slots) {
                started++;
                start(multi, slot);
            }
        }
        if (done < requests) {
            curl_multi_poll(multi, NULL, 0, 1000, NULL);
        }
    }
    double seconds = now_seconds() - wall0;
    double cpu = cpu_seconds() - cpu0;
    printf("{\"mode\": \"%s\", \"urls\": %d, \"in_flight_per_url\": %ld, \"body_bytes\": %zu, \"requests\": %ld, "
           "\"failed\": %ld, \"seconds\": %.3f, \"requests_per_s\": %.1f, \"cpu_us_per_request\": %.2f}\n",
           reset_each ? "reset" : "reuse", url_count, in_flight, body_length, done, failed, seconds,
           (double)done / seconds, cpu * 1e6 / (double)done);
    for (long i = 0; i < slots; i++) {
        curl_multi_remove_handle(multi, all[i].easy);
        curl_easy_cleanup(all[i].easy);
        curl_slist_free_all(all[i].headers);
    }
    free(all);
    curl_multi_cleanup(multi);
    curl_global_cleanup();
    return failed > 0 ? 1 : 0;
}
