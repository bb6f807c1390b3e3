using Dmd.Data;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Pipelines;

/// <summary>
/// Real training data as a text-to-image teacher sees it, for DMD2's GAN: labelled images drawn from an
/// <see cref="IDataSource"/>, each given a caption of its class (a template drawn with the batch's generator), encoded by
/// the pipeline's VAE (the posterior mean times its scaling factor: the latents the UNet was trained on) and its text
/// encoder. A batch is (latents (B, C, h, w), contexts (B, tokens, channels)), the generator's samples and conditions.
/// </summary>
public sealed class CaptionedLatents : IDataSource
{
    private readonly IDataSource images;
    private readonly StableDiffusion sd;
    private readonly Func<int, int, string> caption;
    private readonly int templates;

    /// <summary>Images of <paramref name="images"/> (labelled) captioned by <paramref name="caption"/>(class, template index &lt; <paramref name="templates"/>).</summary>
    public CaptionedLatents(IDataSource images, StableDiffusion sd, Func<int, int, string> caption, int templates)
    {
        if (images.NumClasses == 0) throw new DmdInputException("captioned real data needs labelled images (their class names the caption)");
        int f = sd.VaeScaleFactor;
        if (images.Shape.Length != 3 || images.Shape[0] != sd.Vae.Config.InChannels || images.Shape[1] != sd.Unet.Config.SampleSize * f)
            throw new DmdInputException($"real images of shape [{string.Join(",", images.Shape)}]: the pipeline's VAE takes [{sd.Vae.Config.InChannels}, {sd.Unet.Config.SampleSize * f}, {sd.Unet.Config.SampleSize * f}]");
        (this.images, this.sd, this.caption, this.templates) = (images, sd, caption, templates);
        Shape = new[] { sd.Unet.Config.InChannels, sd.Unet.Config.SampleSize, sd.Unet.Config.SampleSize };
    }

    /// <summary>Fashion-MNIST's training images at the pipeline's resolution with <see cref="FashionMnistCaptions"/>'s templates.</summary>
    public static CaptionedLatents FashionMnist(StableDiffusion sd) =>
        new(DataSource.Parse("fashion-mnist").LoadImages(sd.Unet.Config.SampleSize * sd.VaeScaleFactor, sd.Vae.Config.InChannels, xflip: false),
            sd, FashionMnistCaptions.Caption, FashionMnistCaptions.Templates.Count);

    /// <summary>The latent shape.</summary>
    public int[] Shape { get; }

    /// <summary>The conditions' channels (the UNet's cross_attention_dim): the batch's second part is text contexts, not labels.</summary>
    public int NumClasses => sd.Unet.Config.CrossAttentionDim;

    /// <summary>Images held.</summary>
    public long Count => images.Count;

    /// <summary>Random images with captions of their classes, as latents and text contexts (host tensors).</summary>
    public (Tensor X, Tensor? Labels) Batch(int n, Generator? g)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var (x, y) = images.Batch(n, g);
        var classes = y!.argmax(1).data<long>().ToArray();
        var template = Rng.Integers(0, templates, n, g).data<long>().ToArray();
        var prompts = classes.Select((c, i) => caption((int)c, (int)template[i])).ToArray();
        var dev = sd.Device;
        var mean = sd.Vae.Encode(x.to(dev)).Mean;
        var latents = mean * Diffusion.DenoiserExtensions.Const(sd.Vae.ScalingFactor, mean);
        return (latents.cpu().MoveToOuterDisposeScope(), sd.EncodePrompts(prompts).MoveToOuterDisposeScope());
    }
}
