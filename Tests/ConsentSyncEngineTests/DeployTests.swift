import ConsentSyncTestKit
import Foundation
import Testing

/// The shipped systemd unit is valid for systemd itself.
@Suite struct DeployTests {
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static func run(_ executable: String, _ arguments: [String]) async throws -> (status: Int32, output: String) {
        let result = try await HelperProgram.run(executable, arguments, mergingStandardError: true)
        return (result.status, result.output)
    }

    @Test func theUnitPassesSystemdAnalyzeVerify() async throws {
        let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"].first { FileManager.default.isExecutableFile(atPath: $0) }
        let tool = try #require(analyze, "systemd-analyze is missing: scripts/install-deps.sh installs the systemd package")
        let unit = try String(contentsOf: Self.packageRoot.appendingPathComponent("deploy/consent-sync.service"), encoding: .utf8)
        #expect(unit.contains("Type=notify"))
        #expect(unit.contains("RestartPreventExitStatus=78"))
        #expect(unit.contains("WatchdogSec="))

        // verify insists that ExecStart exists: point it at the binary the tests were built with.
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("unit-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let file = directory.appendingPathComponent("consent-sync.service")
        try unit.replacingOccurrences(of: "/usr/local/bin/consent-sync", with: DaemonProcess.binaryPath)
            .write(to: file, atomically: true, encoding: .utf8)

        let verify = try await Self.run(tool, ["verify", file.path])
        #expect(verify.status == 0, "systemd-analyze verify: \(verify.output)")
        let complaints = verify.output.split(separator: "\n").filter { $0.contains("consent-sync.service") }
        #expect(complaints.isEmpty, "systemd-analyze verify complained: \(complaints)")

        let security = try await Self.run(tool, ["security", "--offline=yes", "--no-pager", file.path])
        let exposure = security.output.split(separator: "\n").first { $0.contains("Overall exposure level") }
        #expect(exposure != nil, "systemd-analyze security printed no exposure level: \(security.output.suffix(500))")
        if let exposure, let score = exposure.split(separator: ":").last?.split(separator: " ").first.flatMap({ Double($0) }) {
            #expect(score <= 2.0, "exposure rose to \(score): \(exposure)")
        }
    }
}
