import ConsentSyncCore
import ConsentSyncOps
import Metrics
import Prometheus
import Testing

/// The Prometheus factory: buckets, build info, and text that the reference parser accepts.
@Suite struct ObservabilityTests {
    @Test func buildInfoAndTimerBuckets() async throws {
        let (factory, registry) = Observability.makePrometheusFactory(version: "9.8.7")
        withMetricsFactory(factory) {
            Timer(label: "consent_sync_attempt_duration_seconds", dimensions: [("subscriber", "crm")]).recordMilliseconds(3)
            Timer(label: "consent_sync_delivery_lag_seconds", dimensions: [("subscriber", "crm")]).recordSeconds(1200)
            Counter(label: "consent_sync_deliveries_total", dimensions: [("subscriber", "crm"), ("outcome", "delivered")]).increment()
            Gauge(label: "consent_sync_oldest_pending_seconds", dimensions: [("subscriber", "a \"quoted\" name")]).record(1.5)
        }
        let samples = try await parsePrometheusText(registry.emitToString())

        let info = try #require(samples.first { $0.name == "consent_sync_build_info" })
        #expect(info.type == "gauge")
        #expect(info.labels == ["version": "9.8.7"])
        #expect(info.value == 1)

        func bounds(_ name: String) -> [Double] {
            samples.filter { $0.name == name + "_bucket" }.compactMap { $0.labels["le"].flatMap(Double.init) }.filter(\.isFinite)
        }
        #expect(bounds("consent_sync_attempt_duration_seconds").first == 0.001)
        #expect(bounds("consent_sync_attempt_duration_seconds").last == 60)
        #expect(bounds("consent_sync_delivery_lag_seconds").first == 0.001)
        #expect(bounds("consent_sync_delivery_lag_seconds").last == 3600)

        // 3 ms is in the 5 ms bucket but not the 2 ms one.
        func bucket(_ name: String, _ le: Double) -> Double? {
            samples.first { $0.name == name + "_bucket" && $0.labels["le"].flatMap(Double.init) == le }?.value
        }
        #expect(bucket("consent_sync_attempt_duration_seconds", 0.002) == 0)
        #expect(bucket("consent_sync_attempt_duration_seconds", 0.005) == 1)
        #expect(bucket("consent_sync_delivery_lag_seconds", 900) == 0)
        #expect(bucket("consent_sync_delivery_lag_seconds", 1800) == 1)

        let delivered = samples.first { $0.name == "consent_sync_deliveries_total" }
        #expect(delivered?.type == "counter")
        #expect(delivered?.labels == ["subscriber": "crm", "outcome": "delivered"])
        #expect(samples.first { $0.name == "consent_sync_oldest_pending_seconds" }?.labels["subscriber"] == "a \"quoted\" name")
    }

    @Test func theDefaultVersionIsTheBinarys() throws {
        let (_, registry) = Observability.makePrometheusFactory()
        #expect(registry.emitToString().contains(#"consent_sync_build_info{version="\#(ConsentSyncVersion.current)"} 1"#))
    }
}
