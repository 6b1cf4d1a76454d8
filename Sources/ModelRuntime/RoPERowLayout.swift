/// The row order of Llama's Wq and Wk (and their biases) as llama.cpp and transformers store them.
///
/// llama.cpp's converter permutes the rows of each head for its interleaved (adjacent-pair) RoPE:
/// `w.reshape(heads, 2, hd/2, cols).swapaxes(1, 2)`. Within one head of `hd` rows, transformers'
/// (rotate-half) row `j·(hd/2) + i` is llama.cpp's row `2i + j`, for j ∈ {0, 1}, i ∈ [0, hd/2).
/// A model loaded from a Llama GGUF holds llama.cpp's order (`RoPE.Style.interleaved`); a
/// transformers checkpoint holds the rotate-half order (`RoPE.Style.neox`). The two give the same
/// attention scores, because q·k sums the same products over the head dimension.
public enum RoPERowLayout {
    /// llama.cpp → transformers. `w` is [heads·headDim, cols] row-major; returns the same shape.
    public static func toHF(_ w: [Float], heads: Int, headDim: Int, cols: Int) -> [Float] {
        permute(w, heads: heads, headDim: headDim, cols: cols, toHF: true)
    }

    /// transformers → llama.cpp. `w` is [heads·headDim, cols] row-major; returns the same shape.
    public static func toGGUF(_ w: [Float], heads: Int, headDim: Int, cols: Int) -> [Float] {
        permute(w, heads: heads, headDim: headDim, cols: cols, toHF: false)
    }

    private static func permute(_ w: [Float], heads: Int, headDim hd: Int, cols: Int, toHF: Bool) -> [Float] {
        precondition(hd % 2 == 0 && w.count == heads * hd * cols, "rows do not match \(heads) heads × \(hd) × \(cols)")
        var out = [Float](repeating: 0, count: w.count)
        let half = hd / 2
        w.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                for h in 0..<heads {
                    for j in 0..<2 {
                        for i in 0..<half {
                            let gguf = h * hd + 2 * i + j, hf = h * hd + j * half + i
                            let (from, to) = toHF ? (gguf, hf) : (hf, gguf)
                            (dst.baseAddress! + to * cols).update(from: src.baseAddress! + from * cols, count: cols)
                        }
                    }
                }
            }
        }
        return out
    }
}
