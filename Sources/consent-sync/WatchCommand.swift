import ArgumentParser
import ConsentSyncEngine
import Foundation
import Logging

struct WatchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "watch",
        abstract: "Capture the changes of consent tables your application already has.",
        subcommands: [Add.self, List.self, Remove.self]
    )

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Install the capture trigger on an existing table.",
            discussion: """
                Checks that the table and every column exist and that the subject, purpose and \
                status columns hold plain values, then installs, in one transaction, a trigger that \
                writes each change of those columns to the outbox. Only the columns named here are \
                captured and sent. Run it as the table's owner. 'consent-sync migrate' keeps the \
                trigger up to date on upgrades.
                """
        )

        @OptionGroup var options: ConfigOptions

        @Argument(help: ArgumentHelp("The table, as SCHEMA.TABLE (default schema public); names exactly as in the catalog.", valueName: "schema.table"))
        var table: String

        @Option(name: .customLong("subject-column"), parsing: .singleValue, help: "The column with the customer's id; repeat (or separate with commas) for a composite id, joined with ':'.")
        var subjectColumns: [String]

        @Option(help: "The column naming the purpose (marketing-email, ads, …).")
        var purposeColumn: String

        @Option(help: "The column with the consent status.")
        var statusColumn: String

        @Option(help: "A column saying where the change came from (channel, application), sent as 'source'.")
        var sourceColumn: String?

        @Option(help: ArgumentHelp("Other columns to capture and send as 'attributes', comma-separated. Nothing else is captured.", valueName: "a,b,c"))
        var columns: String?

        @Option(help: ArgumentHelp("The table's status values mapped to granted, denied or withdrawn, e.g. 'yes=granted,no=denied'. Without it, the column must hold those words; other values are recorded as invalid, not sent.", valueName: "map"))
        var statusMap: String?

        func definition() throws -> WatchDefinition {
            let name = try WatchDefinition.parseTableName(table)
            let definition = WatchDefinition(
                schema: name.schema,
                table: name.table,
                subjectColumns: subjectColumns.flatMap { $0.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) } },
                purposeColumn: purposeColumn,
                statusColumn: statusColumn,
                sourceColumn: sourceColumn,
                columns: columns.map { $0.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) } } ?? [],
                statusMap: try statusMap.map(WatchDefinition.parseStatusMap)
            )
            try definition.validate()
            return definition
        }

        func validate() throws {
            do { _ = try definition() } catch let error as WatchError { throw ValidationError(error.description) }
        }

        func run() async throws {
            let definition = try definition()
            let configuration = try await loadConfiguration(options)
            let (logger, _) = bootstrapLogging(configuration)
            let watch = try await withDatabase(configuration, logger: logger) { connection in
                try await Migrator.requireCurrent(connection)
                return try await WatchStore.add(definition, on: connection)
            }
            logger.notice("watching table", metadata: ["table": "\(definition.qualifiedName)", "watch": "\(watch.id)", "actor": "\(operatorActor())"])
            print("watching \(definition.qualifiedName): its changes are captured from now on (triggers consent_sync_capture and consent_sync_capture_update, function consent_sync.capture_\(watch.id))")
            print("captured columns: \(List.describe(watch.definition))")
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List watched tables and what is captured from each.")

        @OptionGroup var options: ConfigOptions

        @Flag(help: "Print JSON instead of a table.")
        var json = false

        func run() async throws {
            let configuration = try await loadConfiguration(options)
            let (logger, _) = bootstrapLogging(configuration)
            let watches = try await withDatabase(configuration, logger: logger) { connection in
                try await Migrator.requireCurrent(connection)
                return try await WatchStore.list(on: connection)
            }
            if json {
                let objects: [[String: Any]] = watches.map { watch in
                    let d = watch.definition
                    var object: [String: Any] = [
                        "id": watch.id, "table": d.qualifiedName, "subject_columns": d.subjectColumns,
                        "purpose_column": d.purposeColumn, "status_column": d.statusColumn, "columns": d.columns,
                        "created_at": TimeWindow.format(watch.createdAt),
                    ]
                    object["source_column"] = d.sourceColumn
                    object["status_map"] = d.statusMap
                    return object
                }
                let data = try JSONSerialization.data(withJSONObject: objects, options: [.prettyPrinted, .sortedKeys])
                print(String(decoding: data, as: UTF8.self))
                return
            }
            let rows = watches.map { watch in
                let d = watch.definition
                return [
                    d.qualifiedName, d.subjectColumns.joined(separator: "+"), d.purposeColumn, d.statusColumn,
                    d.statusMap.map { $0.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",") } ?? "-",
                    d.sourceColumn ?? "-", d.columns.isEmpty ? "-" : d.columns.joined(separator: ","),
                ]
            }
            print(TextTable.render(header: ["TABLE", "SUBJECT", "PURPOSE", "STATUS", "STATUS MAP", "SOURCE", "ATTRIBUTES"], rows: rows))
        }

        static func describe(_ d: WatchDefinition) -> String {
            var parts = ["subject \(d.subjectColumns.joined(separator: "+"))", "purpose \(d.purposeColumn)", "status \(d.statusColumn)"]
            if let source = d.sourceColumn { parts.append("source \(source)") }
            if !d.columns.isEmpty { parts.append("attributes \(d.columns.joined(separator: ","))") }
            return parts.joined(separator: ", ")
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Drop the capture trigger of a watched table. Changes already captured are still delivered."
        )

        @OptionGroup var options: ConfigOptions

        @Argument(help: ArgumentHelp("The table, as SCHEMA.TABLE.", valueName: "schema.table"))
        var table: String

        func validate() throws {
            do { _ = try WatchDefinition.parseTableName(table) } catch { throw ValidationError(error.description) }
        }

        func run() async throws {
            let name = try WatchDefinition.parseTableName(table)
            let configuration = try await loadConfiguration(options)
            let (logger, _) = bootstrapLogging(configuration)
            let removed = try await withDatabase(configuration, logger: logger) { connection in
                try await Migrator.requireCurrent(connection)
                return try await WatchStore.remove(schema: name.schema, table: name.table, on: connection)
            }
            guard removed else {
                printError("consent-sync: \(name.schema).\(name.table) is not watched ('watch list' shows what is)")
                throw ExitCode.failure
            }
            logger.notice("stopped watching table", metadata: ["table": "\(name.schema).\(name.table)", "actor": "\(operatorActor())"])
            print("no longer watching \(name.schema).\(name.table); changes captured before are still delivered")
        }
    }
}
