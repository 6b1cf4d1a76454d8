/// A dense Float32 tensor in row-major order.
///
/// `shape` lists dimensions outermost first: a `[T, d]` tensor stores row t at `t*d ..< (t+1)*d`.
public struct Tensor: Equatable, Sendable {
    public var shape: [Int]
    public var data: [Float]

    public init(shape: [Int], data: [Float]) {
        precondition(shape.reduce(1, *) == data.count, "tensor data count \(data.count) does not match shape \(shape)")
        self.shape = shape
        self.data = data
    }

    public init(zeros shape: [Int]) {
        self.shape = shape
        self.data = [Float](repeating: 0, count: shape.reduce(1, *))
    }

    public var count: Int { data.count }
    public var rank: Int { shape.count }

    /// Row `i` of a rank-2 tensor `[rows, cols]`.
    public func row(_ i: Int) -> [Float] {
        precondition(rank == 2 && i >= 0 && i < shape[0])
        let cols = shape[1]
        return Array(data[(i * cols)..<((i + 1) * cols)])
    }
}

/// Vector helpers on `[Float]`, accumulated in Double where precision matters.
public enum Vector {
    public static func dot(_ a: [Float], _ b: [Float]) -> Float {
        precondition(a.count == b.count)
        return a.withUnsafeBufferPointer { pa in b.withUnsafeBufferPointer { pb in
            BLAS.sdot(a.count, pa.baseAddress!, pb.baseAddress!) } }
    }

    public static func norm(_ a: [Float]) -> Float {
        var s: Double = 0
        for v in a { s += Double(v) * Double(v) }
        return Float(s.squareRoot())
    }

    public static func maxAbsDifference(_ a: [Float], _ b: [Float]) -> Float {
        precondition(a.count == b.count)
        var m: Float = 0
        for i in 0..<a.count { m = max(m, abs(a[i] - b[i])) }
        return m
    }
}
