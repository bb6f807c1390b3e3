using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Dmd.Networks;

/// <summary>
/// diffusers <c>Attention</c> (models/attention_processor.py) with its default processor: multi-head scaled
/// dot-product attention, <c>to_q</c>/<c>to_k</c>/<c>to_v</c> and <c>to_out.0</c> (<c>to_out.1</c> is a parameter-free
/// dropout). Used two ways, as Stable Diffusion v1.5 does:
/// <list type="bullet">
/// <item>in the UNet's transformer blocks, on tokens [B, N, C]: self-attention or cross-attention over
/// <c>encoder_hidden_states</c>, projections without bias;</item>
/// <item>in the VAE's mid blocks, on a feature map [B, C, H, W]: one head, biased projections, a <c>group_norm</c>
/// first and the input added back (older folders name these <c>query/key/value/proj_attn</c>; see
/// <see cref="AutoencoderKL"/>).</item>
/// </list>
/// </summary>
internal sealed class Attention : nn.Module<Tensor, Tensor?, Tensor>
{
    private readonly FunctionalGroupNorm? group_norm;
    private readonly Linear to_q;
    private readonly Linear to_k;
    private readonly Linear to_v;
    private readonly ModuleList<nn.Module<Tensor, Tensor>> to_out;
    private readonly int heads;
    private readonly bool residualConnection;

    /// <param name="queryDim">Channels of the input (and output).</param>
    /// <param name="crossAttentionDim">Channels of the context, or null for self-attention.</param>
    /// <param name="heads">Number of heads.</param>
    /// <param name="dimHead">Channels per head (the projections have heads * dimHead channels).</param>
    /// <param name="bias">Bias on to_q/to_k/to_v.</param>
    /// <param name="normGroups">Groups of a GroupNorm applied first (eps <paramref name="eps"/>), or null for none.</param>
    /// <param name="eps">GroupNorm epsilon.</param>
    /// <param name="residualConnection">Add the input to the output.</param>
    /// <param name="device">Device of the parameters (the meta device builds shapes without memory).</param>
    public Attention(long queryDim, long? crossAttentionDim, int heads, long dimHead, bool bias = false, int? normGroups = null,
        double eps = 1e-5, bool residualConnection = false, Device? device = null) : base(nameof(Attention))
    {
        long inner = heads * dimHead, ctx = crossAttentionDim ?? queryDim;
        this.heads = heads;
        this.residualConnection = residualConnection;
        group_norm = normGroups is int g ? new FunctionalGroupNorm(g, queryDim, eps, device: device) : null;
        to_q = nn.Linear(queryDim, inner, hasBias: bias, device: device);
        to_k = nn.Linear(ctx, inner, hasBias: bias, device: device);
        to_v = nn.Linear(ctx, inner, hasBias: bias, device: device);
        to_out = nn.ModuleList<nn.Module<Tensor, Tensor>>(nn.Linear(inner, queryDim, device: device), nn.Dropout(0));
        RegisterComponents();
    }

    /// <summary>Attends from <paramref name="x"/> ([B, N, C] or [B, C, H, W]) to <paramref name="context"/> ([B, M, C'], or null for x itself).</summary>
    public override Tensor forward(Tensor x, Tensor? context)
    {
        using var scope = NewDisposeScope();
        var residual = x;
        long b = x.shape[0];
        bool spatial = x.dim() == 4;
        if (spatial) x = x.flatten(2).transpose(1, 2);                       // [B, HW, C]
        if (group_norm is not null) x = group_norm.forward(x.transpose(1, 2)).transpose(1, 2);
        context ??= x;
        var q = SplitHeads(to_q.forward(x));
        var k = SplitHeads(to_k.forward(context));
        var v = SplitHeads(to_v.forward(context));
        var o = nn.functional.scaled_dot_product_attention(q, k, v);          // softmax(q k^T / sqrt(d)) v
        o = o.transpose(1, 2).flatten(2);                                     // [B, N, heads * d]
        o = to_out[0].forward(o);
        if (spatial) o = o.transpose(1, 2).reshape(residual.shape);
        return (residualConnection ? o + residual : o).MoveToOuterDisposeScope();

        Tensor SplitHeads(Tensor t) => t.view(b, t.shape[1], heads, -1).transpose(1, 2);   // [B, heads, N, d]
    }
}
