/// Multiply-accumulates of a forward pass, walked layer by layer with shapes.
public func forwardMACs(_ layer: Layer, input: [Int]) throws -> Int {
  switch layer {
  case let c as Conv2D: return try c.geometry(for: input).macs
  case let l as Linear: return input[0] * l.inputFeatures * l.outputFeatures
  case let s as Sequential:
    var shape = input, total = 0
    for (_, l) in s.layers {
      total += try forwardMACs(l, input: shape)
      shape = try l.outputShape(for: shape)
    }
    return total
  case let c as Checkpointed: return try forwardMACs(c.segment, input: input)
  case let r as ResidualBlock:
    return try forwardMACs(r.main, input: input) + (r.shortcut.map { try forwardMACs($0, input: input) } ?? 0)
  default: return 0
  }
}
