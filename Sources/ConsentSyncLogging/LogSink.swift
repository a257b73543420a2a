import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Where formatted lines go: standard error in the daemon, a buffer in tests.
public struct LogSink: Sendable {
    private let writeLine: @Sendable (String) -> Void

    public init(_ writeLine: @escaping @Sendable (String) -> Void) {
        self.writeLine = writeLine
    }

    public func write(_ line: String) {
        self.writeLine(line)
    }

    /// File descriptor 2, one `write(2)` per line under a lock so that lines from concurrent
    /// tasks never interleave.
    public static let standardError = LogSink { line in
        standardErrorLock.withLock { _ in
            var line = line
            line.withUTF8 { buffer in
                var offset = 0
                while offset < buffer.count {
                    let written = systemWrite(2, buffer.baseAddress! + offset, buffer.count - offset)
                    if written > 0 {
                        offset += written
                    } else if written < 0 && errno == EINTR {
                        continue
                    } else {
                        return  // stderr closed or full: a log line is not worth blocking or crashing for
                    }
                }
            }
        }
    }

    private static let standardErrorLock = Mutex<Void>(())
}

/// `write(2)`; named apart from ``LogSink/write(_:)``.
private func systemWrite(_ descriptor: Int32, _ bytes: UnsafePointer<UInt8>, _ count: Int) -> Int {
    #if canImport(Glibc)
    Glibc.write(descriptor, bytes, count)
    #elseif canImport(Musl)
    Musl.write(descriptor, bytes, count)
    #else
    Darwin.write(descriptor, bytes, count)
    #endif
}
