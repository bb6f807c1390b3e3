using System.Diagnostics;
using Dmd.Networks;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Pipelines;

/// <summary>
/// What `dmd bench --text2img` measured: the median seconds of each part of a text-to-image image at batch 1 (the text
/// encoder on the prompt and the unconditional prompt, one UNet evaluation with CFG's doubled batch and one without, the
/// VAE decode) and the images/s they make for the teacher (<paramref name="TeacherSteps"/> guided Euler steps) and a
/// one-step generator (one UNet evaluation, no guidance: DMD bakes it in).
/// </summary>
public sealed record TextToImageSpeed(string Model, int ImageSize, int Threads, double TextEncoderS, double UNetGuidedS, double UNetS, double VaeDecodeS,
                                      int TeacherSteps, double TeacherSecondsPerImage, double StudentSecondsPerImage, double SpeedUp, long PeakRssMb)
{
    /// <summary>Teacher images per second.</summary>
    public double TeacherImagesPerSecond => 1 / TeacherSecondsPerImage;
    /// <summary>Student images per second.</summary>
    public double StudentImagesPerSecond => 1 / StudentSecondsPerImage;
}

/// <summary>
/// Text-to-image speed at batch 1, part by part: the image of a teacher with N guided steps costs the text encoder (two
/// prompts), N UNet evaluations at batch 2 and one VAE decode; the distilled generator's costs the text encoder (one prompt),
/// one UNet evaluation at batch 1 and the decode. Timing the parts (median of repeats after a warm-up) instead of whole
/// images lets a full-size Stable Diffusion v1.5 (whose UNet takes tens of seconds per evaluation on a CPU) be measured in
/// minutes; the parts' sum is what a whole image costs, since the pipeline is these calls in sequence.
/// </summary>
public static class TextToImageBenchmark
{
    /// <summary>
    /// Times the parts of <paramref name="textEncoder"/>, <paramref name="unet"/> and <paramref name="vae"/> at latents
    /// <paramref name="latentSize"/> (images <c>latentSize * 2^(levels-1)</c>), median of <paramref name="repeats"/> after one warm-up.
    /// Weights do not change the cost: a randomly initialised SD v1.5 measures what the real one costs.
    /// </summary>
    public static TextToImageSpeed Run(string model, ClipTextModel textEncoder, UNet2DConditionModel unet, AutoencoderKL vae, int latentSize,
                                       int teacherSteps = 25, int repeats = 3, Action<string>? onMessage = null)
    {
        Settings.AtLeast("repeats", repeats, 1);
        Settings.AtLeast("steps", teacherSteps, 1);
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var g = new Generator(0);
        long tokens = textEncoder.Config.MaxPositionEmbeddings;
        var ids = randint(0, textEncoder.Config.VocabSize, new long[] { 2, tokens }, dtype: ScalarType.Int64, generator: g);
        var ctx = randn(new long[] { 2, tokens, unet.Config.CrossAttentionDim }, generator: g);
        var x = randn(new long[] { 2, unet.Config.InChannels, latentSize, latentSize }, generator: g);
        var t = tensor(new[] { 500f, 500f });
        var z = randn(new long[] { 1, vae.Config.LatentChannels, latentSize, latentSize }, generator: g);
        double Median(string what, Func<Tensor> f)
        {
            var times = new List<double>();
            for (int i = 0; i <= repeats; i++)
            {
                using var s = NewDisposeScope();
                var sw = Stopwatch.StartNew();
                f();
                if (i > 0) times.Add(sw.Elapsed.TotalSeconds);
            }
            times.Sort();
            onMessage?.Invoke($"{what}: {times[times.Count / 2]:F3} s (median of {repeats})");
            return times[times.Count / 2];
        }
        double te = Median("text encoder, 2 prompts", () => textEncoder.forward(ids));
        double uGuided = Median("UNet, batch 2 (CFG)", () => unet.forward(x, t, ctx));
        double u = Median("UNet, batch 1", () => unet.forward(x[..1], t[..1], ctx[..1]));
        double dec = Median("VAE decode", () => vae.Decode(z));
        double teacher = te + teacherSteps * uGuided + dec;
        double student = te + u + dec; // the text encoder at batch 2 bounds the generator's batch-1 prompt from above
        int size = latentSize << (vae.Config.BlockOutChannels.Length - 1);
        return new TextToImageSpeed(model, size, get_num_threads(), te, uGuided, u, dec, teacherSteps, teacher, student, teacher / student,
                                    Process.GetCurrentProcess().PeakWorkingSet64 >> 20);
    }

    /// <summary>Stable Diffusion v1.5's text encoder, UNet and VAE at full size with random weights (about 4.3 GB of float32 weights).</summary>
    public static (ClipTextModel TextEncoder, UNet2DConditionModel UNet, AutoencoderKL Vae) StableDiffusion15Random()
    {
        var te = new ClipTextModel(ClipTextConfig.StableDiffusion15);
        var unet = new UNet2DConditionModel(new UNet2DConditionConfig());
        var vae = new AutoencoderKL(new AutoencoderKLConfig());
        te.eval(); unet.eval(); vae.eval();
        return (te, unet, vae);
    }
}
