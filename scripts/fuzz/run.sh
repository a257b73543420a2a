#!/usr/bin/env bash
# Builds the libFuzzer targets (swiftc -sanitize=fuzzer,address on the sources they exercise)
# and runs each for a while.
#
#   scripts/fuzz/run.sh                 # 60 s per target
#   FUZZ_SECONDS=20 scripts/fuzz/run.sh # what `make test` runs (scripts/ci-extra.sh)
#   FUZZ_SECONDS=3600 scripts/fuzz/run.sh retry-after   # longer, one target
#
# Targets: retry-after (RetryAfter.parse), webhook-verify (WebhookSigner.verify),
# receiver-response (response head parsing, Retry-After, status classification, retry decision,
# body excerpt), config (config file and environment values: YAML, typed reads, connection
# string redaction, listen addresses).
# webhook-verify and config link objects (swift-crypto, Yams, swift-system, ConsentSyncCore)
# from a normal debug build, made first with `swift build --scratch-path $SCRATCH --target ...`
# (default scratch: .build-fuzz-deps; SCRATCH=.build reuses the main build).
# Corpora are kept in .build-fuzz/corpus-<target>; crashes land in .build-fuzz/ as crash-*.
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds="${FUZZ_SECONDS:-60}"
scratch="${SCRATCH:-.build-fuzz-deps}"
out=.build-fuzz
mkdir -p "$out"
targets=("${@:-retry-after webhook-verify receiver-response config}")
targets=(${targets[@]})

build_retry_after() {
    swiftc -sanitize=fuzzer,address -parse-as-library -Onone -g -module-name FuzzRetryAfter \
        Sources/ConsentSyncCore/Retry/RetryAfter.swift scripts/fuzz/RetryAfterFuzz.swift \
        -o "$out/retry-after"
}

build_webhook_verify() {
    swift build --scratch-path "$scratch" --target ConsentSyncCore >/dev/null
    local debug="$scratch/debug" crypto
    crypto="$(ls -d "$scratch"/checkouts/swift-crypto)"
    # swift-crypto's compiled objects (not instrumented: the fuzzer steers by our code's coverage).
    local objects=()
    while IFS= read -r file; do objects+=("$file"); done < <(
        find "$debug/Crypto.build" "$debug/CryptoBoringWrapper.build" "$debug/CCryptoBoringSSLShims.build" "$debug/CCryptoBoringSSL.build" \
            "$debug/CXKCP.build" "$debug/CXKCPShims.build" -name '*.o' 2>/dev/null
    )
    swiftc -sanitize=fuzzer,address -parse-as-library -Onone -g -module-name FuzzWebhookVerify \
        -I "$debug/Modules" \
        -Xcc -fmodule-map-file="$crypto/Sources/CCryptoBoringSSL/include/module.modulemap" \
        -Xcc -fmodule-map-file="$crypto/Sources/CCryptoBoringSSLShims/include/module.modulemap" \
        -Xcc -I"$crypto/Sources/CCryptoBoringSSL/include" -Xcc -I"$crypto/Sources/CCryptoBoringSSLShims/include" \
        Sources/ConsentSyncCore/Signing/SigningSecret.swift Sources/ConsentSyncCore/Signing/WebhookSigner.swift \
        scripts/fuzz/WebhookVerifyFuzz.swift "${objects[@]}" \
        -o "$out/webhook-verify"
}

# Objects of the named targets in a debug build, for linking (not instrumented: the fuzzer
# steers by the coverage of the sources compiled here).
objects_of() {
    local debug="$scratch/debug" name
    for name in "$@"; do
        find "$debug/$name.build" -name '*.o' 2>/dev/null
    done
}

crypto_objects=(Crypto CryptoBoringWrapper CCryptoBoringSSLShims CCryptoBoringSSL CXKCP CXKCPShims)

build_receiver_response() {
    swiftc -sanitize=fuzzer,address -parse-as-library -Onone -g -module-name FuzzReceiverResponse \
        Sources/ConsentSyncCore/Retry/*.swift \
        Sources/ConsentSyncHTTP/HTTPHeader.swift Sources/ConsentSyncHTTP/HTTPResponse.swift \
        Sources/ConsentSyncHTTP/Curl/ResponseHeadParser.swift \
        Sources/ConsentSyncCore/Events/ReceiverAnswer.swift \
        scripts/fuzz/ReceiverResponseFuzz.swift \
        -o "$out/receiver-response"
}

build_config() {
    local target
    for target in ConsentSyncCore Yams SystemPackage; do
        swift build --scratch-path "$scratch" --target "$target" >/dev/null
    done
    local debug="$scratch/debug" checkouts="$scratch/checkouts"
    local objects=()
    while IFS= read -r file; do objects+=("$file"); done < <(
        objects_of ConsentSyncCore Yams CYaml SystemPackage CSystem "${crypto_objects[@]}"
    )
    swiftc -sanitize=fuzzer,address -parse-as-library -Onone -g -module-name FuzzConfig \
        -I "$debug/Modules" \
        -Xcc -fmodule-map-file="$checkouts/Yams/Sources/CYaml/include/module.modulemap" \
        -Xcc -fmodule-map-file="$checkouts/swift-system/Sources/CSystem/include/module.modulemap" \
        -Xcc -fmodule-map-file="$checkouts/swift-crypto/Sources/CCryptoBoringSSL/include/module.modulemap" \
        -Xcc -fmodule-map-file="$checkouts/swift-crypto/Sources/CCryptoBoringSSLShims/include/module.modulemap" \
        Sources/consent-sync/ConfigDocument.swift Sources/consent-sync/ConfigLoader.swift Sources/consent-sync/ConfigSchema.swift \
        Sources/consent-sync/ConfigurationError.swift Sources/consent-sync/ConfigConnectionString.swift \
        Sources/consent-sync/ConfigListenAddress.swift \
        scripts/fuzz/ConfigFuzz.swift "${objects[@]}" \
        -o "$out/config"
}

status=0
for target in "${targets[@]}"; do
    case "$target" in
        retry-after) build_retry_after ;;
        webhook-verify) build_webhook_verify ;;
        receiver-response) build_receiver_response ;;
        config) build_config ;;
        *) echo "unknown target $target" >&2; exit 64 ;;
    esac
    mkdir -p "$out/corpus-$target"
    seeds="scripts/fuzz/seeds/$target"
    echo "fuzz: $target for ${seconds}s" >&2
    if ! SWIFT_BACKTRACE=enable=no "$out/$target" -max_total_time="$seconds" -max_len=4096 -artifact_prefix="$out/" -print_final_stats=1 \
        "$out/corpus-$target" ${seeds:+$( [ -d "$seeds" ] && echo "$seeds")} 2>"$out/$target.log"; then
        echo "fuzz: $target FOUND A CRASH; see $out/$target.log and $out/crash-*" >&2
        tail -n 40 "$out/$target.log" >&2
        status=1
    else
        grep -E "stat::number_of_executed_runs|cov:" "$out/$target.log" | tail -n 2 >&2
    fi
done
exit $status
