import Foundation

/// Why an image could not be read. Every case names the file; `description` says what to do.
public struct ImageError: Error, CustomStringConvertible, Equatable {
  public enum Reason: Equatable, Sendable {
    case unreadable(String)
    case empty
    case unknownFormat
    case corrupt(String)
    case tooLarge(width: Int, height: Int, limit: Int)
    case unsupported(String)
    case badRegion(String)
  }
  public var path: String
  public var reason: Reason

  public init(path: String, _ reason: Reason) {
    self.path = path
    self.reason = reason
  }

  public var description: String {
    switch reason {
    case .unreadable(let why): "\(path): cannot read the file: \(why)"
    case .empty: "\(path): the file is empty"
    case .unknownFormat: "\(path): not a JPEG, PNG, PPM/PGM or TIFF image (unrecognised first bytes)"
    case .corrupt(let why): "\(path): corrupt or truncated image: \(why)"
    case let .tooLarge(w, h, limit):
      "\(path): \(w)×\(h) = \(w * h) pixels is over the \(limit)-pixel limit; read a region or a reduced scale, or raise maxPixels"
    case .unsupported(let why): "\(path): unsupported image: \(why)"
    case .badRegion(let why): "\(path): \(why)"
    }
  }
}
