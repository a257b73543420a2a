import ConsentSyncEngine
import ConsentSyncOps
import Foundation
import Testing

/// `/healthz` and `/readyz` decided from snapshots, without a server.
@Suite struct ProbeResponseTests {
    let start = ContinuousClock.now

    func snapshot(turnedAgo: Duration?, ready: Bool = true) -> RelayHealth.Snapshot {
        var snapshot = RelayHealth.Snapshot()
        snapshot.lastLoopTurn = turnedAgo.map { start - $0 }
        snapshot.databaseReady = ready
        snapshot.listening = ready
        snapshot.schemaVersion = ready ? 1 : nil
        return snapshot
    }

    @Test func aTurningLoopIsAlive() {
        let liveness = LoopLiveness(snapshot(turnedAgo: .milliseconds(1500)), window: .seconds(30), startedAt: start - .seconds(60), now: start)
        #expect(liveness == .alive(age: .milliseconds(1500)))
        #expect(ProbeResponse.liveness(liveness) == ProbeResponse(status: 200, body: #"{"status":"ok","loop_age_ms":1500}"#))
    }

    @Test func aLoopThatStoppedTurningIsStalled() {
        let liveness = LoopLiveness(snapshot(turnedAgo: .seconds(31)), window: .seconds(30), startedAt: start - .seconds(60), now: start)
        #expect(!liveness.isAlive)
        #expect(ProbeResponse.liveness(liveness) == ProbeResponse(status: 503, body: #"{"status":"stalled","loop_age_ms":31000}"#))
    }

    @Test func beforeTheFirstTurnTheProcessIsStartingThenStalled() {
        let early = LoopLiveness(snapshot(turnedAgo: nil), window: .seconds(30), startedAt: start - .seconds(2), now: start)
        #expect(early == .starting(uptime: .seconds(2)))
        #expect(ProbeResponse.liveness(early) == ProbeResponse(status: 200, body: #"{"status":"starting","loop_age_ms":null}"#))
        let late = LoopLiveness(snapshot(turnedAgo: nil), window: .seconds(30), startedAt: start - .seconds(40), now: start)
        #expect(late == .stalled(age: nil))
        #expect(ProbeResponse.liveness(late).status == 503)
    }

    @Test func readyWhenConnectedListeningAndMigrated() {
        #expect(ProbeResponse.readiness(snapshot(turnedAgo: .zero)) == ProbeResponse(
            status: 200,
            body: #"{"status":"ready","database":true,"listening":true,"schema_version":1}"#
        ))
    }

    @Test func notReadyShowsWhatIsMissingAndTheLastError() throws {
        var health = snapshot(turnedAgo: .zero)
        health.databaseReady = false
        health.lastError = "connection failed: database \"x\" is not currently accepting connections\n\tsecond line"
        let response = ProbeResponse.readiness(health)
        #expect(response.status == 503)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(response.body.utf8)) as? [String: Any])
        #expect(object["status"] as? String == "not_ready")
        #expect(object["database"] as? Bool == false)
        #expect(object["listening"] as? Bool == true)
        #expect(object["schema_version"] as? Int == 1)
        #expect(object["last_error"] as? String == health.lastError)
    }

    @Test func stoppingIsNotReady() {
        var health = snapshot(turnedAgo: .zero)
        health.stopping = true
        let response = ProbeResponse.readiness(health)
        #expect(response.status == 503)
        #expect(response.body.hasPrefix(#"{"status":"stopping","#))
    }

    @Test func aLongErrorIsCut() throws {
        var health = snapshot(turnedAgo: .zero, ready: false)
        health.lastError = String(repeating: "é", count: 1000)
        let body = ProbeResponse.readiness(health).body
        let object = try #require(try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any])
        #expect((object["last_error"] as? String)?.count == ProbeResponse.maxErrorLength)
        #expect(object["schema_version"] is NSNull)
    }
}
