import Foundation
import ModelRuntime
import TestSupport

/// Paths and tiny models for the editing tests.
enum EditTestPaths {
    static let repoRoot = TestPaths.repoRoot
    static func fixture(_ name: String) -> URL { TestPaths.fixture(name) }
    static var sharedData: URL { TestPaths.sharedData }
    static func temporaryDirectory() throws -> URL { try TestPaths.temporaryDirectory("edit-test") }
    static func defaultModel() throws -> String { try TestPaths.defaultModel() }
}

typealias TinyEditModel = TinyModel
