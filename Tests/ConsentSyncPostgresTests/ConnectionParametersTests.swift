@testable import ConsentSyncPostgres
import Testing

@Suite struct ConnectionParametersTests {
    @Test func connectionStringComesFirstAndUTF8Last() {
        let configuration = PostgresConfiguration(connectionString: "postgresql://u@h/db", overrides: [("dbname", "other")])
            .with("application_name", "consent-sync")
        let parameters = ConnectionParameters(configuration)
        #expect(parameters.keywords == ["dbname", "dbname", "application_name", "client_encoding"])
        #expect(parameters.values == ["postgresql://u@h/db", "other", "consent-sync", "UTF8"])
        #expect(configuration.overrides.map(\.0) == ["dbname", "application_name"])
    }

    @Test func descriptionHidesValues() {
        let configuration = PostgresConfiguration(connectionString: "password=sekrit123", overrides: [("password", "sekrit123")])
        #expect(!"\(configuration)".contains("sekrit123"))
    }

    @Test func passwordsAreCollectedFromEverySource() {
        let configuration = PostgresConfiguration(
            connectionString: "postgresql://user:fromuri99@localhost/db",
            overrides: [("password", "fromoverride")]
        )
        let passwords = ConnectionParameters(configuration).passwords
        #expect(passwords.contains("fromuri99"))
        #expect(passwords.contains("fromoverride"))
    }

    @Test(arguments: [
        "host=localhost password=sekrit123 port",
        "host=localhost sekrit123",
        "postgresql://user:sekrit123%zz@localhost/db",
        "postgresql://user@localhost/db?password=sekrit123&bogus",
        "host='localhost password=sekrit123",
    ])
    func parseErrorsDoNotEchoSecrets(connectionString: String) throws {
        let problem = try #require(ConnectionParameters.validate(PostgresConfiguration(connectionString: connectionString)))
        #expect(problem.code == .connectionFailed)
        #expect(!problem.message.contains("sekrit123"))
        #expect(!problem.description.contains("sekrit123"))
    }

    @Test func redactionKeepsKeywordsAndHidesSecrets() {
        #expect(ConnectionParameters.redactQuoted(#"invalid connection option "sekrit123""#) == #"invalid connection option "…""#)
        #expect(ConnectionParameters.redactQuoted(#"invalid integer value "x1" for connection option "port""#)
            == #"invalid integer value "…" for connection option "port""#)
        #expect(ConnectionParameters.redact("user x password sekrit123 failed", secrets: ["sekrit123", "ab"])
            == "user x password ******** failed")
    }

    @Test func validationErrorUsesLibpqsParser() {
        #expect(PostgresConfiguration(connectionString: "host=localhost port=5432 dbname=x").validationError() == nil)
        #expect(PostgresConfiguration(connectionString: "postgresql://u@h:5432/db?sslmode=require").validationError() == nil)
        #expect(PostgresConfiguration(connectionString: "host=localhost nonsense_option=1").validationError()?.code == .connectionFailed)
        #expect(PostgresConfiguration(connectionString: "host='unterminated").validationError() != nil)
    }

    @Test func plainDatabaseNamesAreNotParsed() {
        #expect(ConnectionParameters.validate(PostgresConfiguration(connectionString: "mydb")) == nil)
        #expect(ConnectionParameters.validate(PostgresConfiguration()) == nil)
        let nul = PostgresConfiguration(connectionString: "", overrides: [("dbname", "a\u{0}b")])
        #expect(ConnectionParameters.validate(nul)?.code == .invalidArgument)
    }
}
