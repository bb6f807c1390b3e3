using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Networks;

/// <summary>
/// The settings every block of one U-Net shares (EDM's <c>block_kwargs</c>). SongUNet and DhariwalUNet
/// differ only here: see their constructors.
/// </summary>
internal sealed record UNetBlockOptions
{
    public required int EmbChannels { get; init; }          // Width of the embedding vector.
    public int? NumHeads { get; init; }                     // Attention heads; null = out_channels / ChannelsPerHead.
    public int ChannelsPerHead { get; init; } = 64;         // Used where NumHeads is null.
    public double Dropout { get; init; }                    // Dropout before conv1.
    public double SkipScale { get; init; } = 1;             // Scale of each residual sum.
    public double Eps { get; init; } = 1e-5;                // GroupNorm epsilon.
    public double[] ResampleFilter { get; init; } = { 1, 1 }; // FIR filter of up/downsampling.
    public bool ResampleProj { get; init; }                 // 1x1 projection on a resampling skip path.
    public bool AdaptiveScale { get; init; } = true;        // Embedding gives scale and shift (true) or a bias.
    public EdmInit Init { get; init; } = EdmInit.Default;   // conv0, affine, skip, qkv (if InitAttn is null).
    public EdmInit InitZero { get; init; } = new(Weight: 0); // conv1, proj.
    public EdmInit? InitAttn { get; init; }                 // qkv.
}

/// <summary>
/// EDM <c>UNetBlock</c>: the union of the DDPM++, NCSN++ and ADM residual blocks, with optional 2x
/// up/downsampling and multi-head self-attention. Submodules norm0, conv0, affine, norm1, conv1,
/// skip (where the shape changes), norm2, qkv, proj (where attention is on).
/// </summary>
internal sealed class UNetBlock : nn.Module<Tensor, Tensor, Tensor>
{
    private readonly EdmGroupNorm norm0;
    private readonly EdmConv2d conv0;
    private readonly EdmLinear affine;
    private readonly EdmGroupNorm norm1;
    private readonly EdmConv2d conv1;
    private readonly EdmConv2d? skip;
    private readonly EdmGroupNorm? norm2;
    private readonly EdmConv2d? qkv;
    private readonly EdmConv2d? proj;
    private readonly double dropout, skipScale;
    private readonly bool adaptiveScale;

    public UNetBlock(int inChannels, int outChannels, UNetBlockOptions o, bool up = false, bool down = false, bool attention = false)
        : base(nameof(UNetBlock))
    {
        InChannels = inChannels;
        OutChannels = outChannels;
        NumHeads = !attention ? 0 : o.NumHeads ?? outChannels / o.ChannelsPerHead;
        dropout = o.Dropout;
        skipScale = o.SkipScale;
        adaptiveScale = o.AdaptiveScale;

        norm0 = new EdmGroupNorm(inChannels, eps: o.Eps);
        conv0 = new EdmConv2d(inChannels, outChannels, 3, up: up, down: down, resampleFilter: o.ResampleFilter, init: o.Init);
        affine = new EdmLinear(o.EmbChannels, outChannels * (adaptiveScale ? 2 : 1), init: o.Init);
        norm1 = new EdmGroupNorm(outChannels, eps: o.Eps);
        conv1 = new EdmConv2d(outChannels, outChannels, 3, init: o.InitZero);

        if (outChannels != inChannels || up || down)
        {
            int kernel = o.ResampleProj || outChannels != inChannels ? 1 : 0;
            skip = new EdmConv2d(inChannels, outChannels, kernel, up: up, down: down, resampleFilter: o.ResampleFilter, init: o.Init);
        }

        if (NumHeads > 0)
        {
            norm2 = new EdmGroupNorm(outChannels, eps: o.Eps);
            qkv = new EdmConv2d(outChannels, outChannels * 3, 1, init: o.InitAttn ?? o.Init);
            proj = new EdmConv2d(outChannels, outChannels, 1, init: o.InitZero);
        }
        RegisterComponents();
    }

    public int InChannels { get; }
    public int OutChannels { get; }

    /// <summary>Attention heads; 0 = no attention.</summary>
    public int NumHeads { get; }

    public override Tensor forward(Tensor x, Tensor emb)
    {
        using var scope = NewDisposeScope();
        var orig = x;
        x = conv0.forward(nn.functional.silu(norm0.forward(x)));

        var p = affine.forward(emb).unsqueeze(2).unsqueeze(3).to(x.dtype);
        if (adaptiveScale)
        {
            var scaleShift = p.chunk(2, 1);
            x = nn.functional.silu(addcmul(scaleShift[1], norm1.forward(x), scaleShift[0] + 1, 1));
        }
        else
        {
            x = nn.functional.silu(norm1.forward(x + p));
        }

        x = conv1.forward(nn.functional.dropout(x, dropout, training));
        x = x + (skip is not null ? skip.forward(orig) : orig);
        if (skipScale != 1) x = x * skipScale;

        if (NumHeads > 0)
        {
            var a = SelfAttention(qkv!.forward(norm2!.forward(x)), NumHeads);
            x = proj!.forward(a) + x;
            if (skipScale != 1) x = x * skipScale;
        }
        return x.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Multi-head self-attention over the pixels, from the output of the <c>qkv</c> convolution
    /// (B, 3C, H, W) to (B, C, H, W). Channel layout of the input, as in EDM (DESIGN.md section 5):
    /// <c>[head][channel][q|k|v]</c>, i.e. channel <c>3 (h d + c) + j</c> holds q (j = 0), k (1) or v (2)
    /// of channel c of head h, d = C / heads. EDM reshapes to (B heads, d, 3, HW) and unbinds dim 2.
    /// The attention logits and softmax are computed in float32.
    /// </summary>
    internal static Tensor SelfAttention(Tensor qkvOut, int numHeads)
    {
        using var scope = NewDisposeScope();
        long b = qkvOut.shape[0], c = qkvOut.shape[1] / 3, h = qkvOut.shape[2], w = qkvOut.shape[3];
        var parts = qkvOut.reshape(b * numHeads, c / numHeads, 3, -1).unbind(2);
        Tensor q = parts[0], k = parts[1], v = parts[2];                        // (B heads, d, HW)
        var kScaled = k / Math.Sqrt(k.shape[1]);
        var weights = q.to(ScalarType.Float32).transpose(1, 2)
            .matmul(kScaled.to(ScalarType.Float32)).softmax(2).to(q.dtype);     // (B heads, HW_q, HW_k)
        var a = v.matmul(weights.transpose(1, 2));                              // (B heads, d, HW_q)
        if (FlopCounter.On)
        {
            long products = 2 * q.shape[0] * q.shape[2] * k.shape[2] * q.shape[1]; // each of the two products
            FlopCounter.Add(products, q, k);
            FlopCounter.Add(products, v, q);
        }
        return a.reshape(b, c, h, w).MoveToOuterDisposeScope();
    }
}
