using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Dmd.Networks;

// diffusers' models/transformers/transformer_2d.py and models/attention.py as Stable Diffusion v1.5's UNet uses them:
// a continuous-input Transformer2DModel with 1x1-convolution projections (use_linear_projection false) around one
// BasicTransformerBlock (self-attention, cross-attention, GEGLU feed-forward; LayerNorm before each).

/// <summary>
/// diffusers <c>Transformer2DModel</c> on a feature map: GroupNorm (eps 1e-6), 1x1 <c>proj_in</c>, the pixels as
/// tokens through <c>transformer_blocks</c>, 1x1 <c>proj_out</c>, plus the input.
/// </summary>
internal sealed class Transformer2DModel : nn.Module<Tensor, Tensor, Tensor>
{
    private readonly FunctionalGroupNorm norm;
    private readonly Conv2d proj_in;
    private readonly ModuleList<BasicTransformerBlock> transformer_blocks;
    private readonly Conv2d proj_out;

    public Transformer2DModel(int heads, long dimHead, long inChannels, long crossAttentionDim, int normGroups, Device? device = null)
        : base(nameof(Transformer2DModel))
    {
        long inner = heads * dimHead;
        norm = new FunctionalGroupNorm(normGroups, inChannels, 1e-6, device: device);
        proj_in = nn.Conv2d(inChannels, inner, 1, device: device);
        transformer_blocks = nn.ModuleList(new BasicTransformerBlock(inner, heads, dimHead, crossAttentionDim, device));
        proj_out = nn.Conv2d(inner, inChannels, 1, device: device);
        RegisterComponents();
    }

    /// <summary>x [B, C, H, W] attending to <paramref name="context"/> [B, M, cross_attention_dim].</summary>
    public override Tensor forward(Tensor x, Tensor context)
    {
        using var scope = NewDisposeScope();
        long b = x.shape[0], h = x.shape[2], w = x.shape[3];
        var t = proj_in.forward(norm.forward(x));
        long inner = t.shape[1];
        t = t.permute(0, 2, 3, 1).reshape(b, h * w, inner);
        foreach (var block in transformer_blocks) t = block.forward(t, context);
        t = t.reshape(b, h, w, inner).permute(0, 3, 1, 2);
        return (proj_out.forward(t) + x).MoveToOuterDisposeScope();
    }
}

/// <summary>
/// diffusers <c>BasicTransformerBlock</c> (norm_type "layer_norm"): x + attn1(norm1(x)), then + attn2(norm2(x), context),
/// then + ff(norm3(x)).
/// </summary>
internal sealed class BasicTransformerBlock : nn.Module<Tensor, Tensor, Tensor>
{
    private readonly LayerNorm norm1;
    private readonly Attention attn1;
    private readonly LayerNorm norm2;
    private readonly Attention attn2;
    private readonly LayerNorm norm3;
    private readonly FeedForward ff;

    public BasicTransformerBlock(long dim, int heads, long dimHead, long crossAttentionDim, Device? device = null)
        : base(nameof(BasicTransformerBlock))
    {
        norm1 = nn.LayerNorm(dim, 1e-5, device: device);
        attn1 = new Attention(dim, null, heads, dimHead, device: device);
        norm2 = nn.LayerNorm(dim, 1e-5, device: device);
        attn2 = new Attention(dim, crossAttentionDim, heads, dimHead, device: device);
        norm3 = nn.LayerNorm(dim, 1e-5, device: device);
        ff = new FeedForward(dim, device);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x, Tensor context)
    {
        using var scope = NewDisposeScope();
        x = attn1.forward(norm1.forward(x), null) + x;
        x = attn2.forward(norm2.forward(x), context) + x;
        return (ff.forward(norm3.forward(x)) + x).MoveToOuterDisposeScope();
    }
}

/// <summary>diffusers <c>FeedForward</c> with GEGLU: <c>net.0</c> GEGLU to 4x width, <c>net.1</c> dropout, <c>net.2</c> linear back.</summary>
internal sealed class FeedForward : nn.Module<Tensor, Tensor>
{
    private readonly ModuleList<nn.Module<Tensor, Tensor>> net;

    public FeedForward(long dim, Device? device = null) : base(nameof(FeedForward))
    {
        long inner = 4 * dim;
        net = nn.ModuleList<nn.Module<Tensor, Tensor>>(new GEGLU(dim, inner, device), nn.Dropout(0), nn.Linear(inner, dim, device: device));
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        foreach (var m in net) x = m.forward(x);
        return x;
    }
}

/// <summary>diffusers <c>GEGLU</c>: <c>proj</c> to twice the width, split in (hidden, gate), hidden * GELU(gate) (exact GELU).</summary>
internal sealed class GEGLU : nn.Module<Tensor, Tensor>
{
    private readonly Linear proj;

    public GEGLU(long dimIn, long dimOut, Device? device = null) : base(nameof(GEGLU))
    {
        proj = nn.Linear(dimIn, 2 * dimOut, device: device);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        var parts = proj.forward(x).chunk(2, -1);
        return parts[0] * nn.functional.gelu(parts[1]);
    }
}
