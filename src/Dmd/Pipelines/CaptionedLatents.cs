using Dmd.Data;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Pipelines;

/// <summary>
/// Real training data as a text-to-image teacher sees it, for DMD2's GAN: captioned images, encoded by the pipeline's VAE
/// (the posterior mean times its scaling factor: the latents the UNet was trained on) and its text encoder. A batch is
/// (latents (B, C, h, w), contexts (B, tokens, channels)), the generator's samples and conditions. Two sources: labelled
/// images whose class names the caption (<see cref="FashionMnist"/>: a template drawn with the batch's generator), or a
/// folder of images with their captions (<see cref="FromFolder"/>, read from disk batch by batch).
/// </summary>
public sealed class CaptionedLatents : IDataSource
{
    /// <summary>The name of a captioned folder's caption file (Hugging Face ImageFolder's, as diffusers' train_text_to_image reads).</summary>
    public const string MetadataFile = "metadata.jsonl";

    private readonly StableDiffusion sd;
    private readonly Func<int, Generator?, (Tensor Images, string[] Captions)> draw;

    private CaptionedLatents(StableDiffusion sd, long count, Func<int, Generator?, (Tensor, string[])> draw)
    {
        (this.sd, this.draw, Count) = (sd, draw, count);
        Shape = new[] { sd.Unet.Config.InChannels, sd.Unet.Config.SampleSize, sd.Unet.Config.SampleSize };
    }

    /// <summary>Images of <paramref name="images"/> (labelled) captioned by <paramref name="caption"/>(class, template index &lt; <paramref name="templates"/>).</summary>
    public CaptionedLatents(IDataSource images, StableDiffusion sd, Func<int, int, string> caption, int templates)
        : this(sd, images.Count, (n, g) =>
        {
            var (x, y) = images.Batch(n, g);
            var classes = y!.argmax(1).data<long>().ToArray();
            var template = Rng.Integers(0, templates, n, g).data<long>().ToArray();
            return (x, classes.Select((c, i) => caption((int)c, (int)template[i])).ToArray());
        })
    {
        if (images.NumClasses == 0) throw new DmdInputException("captioned real data needs labelled images (their class names the caption)");
        int size = sd.Unet.Config.SampleSize * sd.VaeScaleFactor;
        if (images.Shape.Length != 3 || images.Shape[0] != sd.Vae.Config.InChannels || images.Shape[1] != size)
            throw new DmdInputException($"real images of shape [{string.Join(",", images.Shape)}]: the pipeline's VAE takes [{sd.Vae.Config.InChannels}, {size}, {size}]");
    }

    /// <summary>Fashion-MNIST's training images at the pipeline's resolution with <see cref="FashionMnistCaptions"/>'s templates.</summary>
    public static CaptionedLatents FashionMnist(StableDiffusion sd) =>
        new(DataSource.Parse("fashion-mnist").LoadImages(sd.Unet.Config.SampleSize * sd.VaeScaleFactor, sd.Vae.Config.InChannels, xflip: false),
            sd, FashionMnistCaptions.Caption, FashionMnistCaptions.Templates.Count);

    /// <summary>
    /// A folder of captioned images: <c>metadata.jsonl</c> with one JSON object a line, <c>{"file_name": "a.png", "text":
    /// "a caption"}</c> (Hugging Face ImageFolder's layout, the one diffusers' train_text_to_image.py reads; the file
    /// name relative to the folder). Each batch draws images uniformly, decodes them (short side resized to the
    /// pipeline's resolution, centre square cropped, as <c>folder:</c> image data) and encodes them with their captions.
    /// A missing file, a bad line or a missing image is a one-line <see cref="DmdInputException"/> naming it.
    /// </summary>
    public static CaptionedLatents FromFolder(StableDiffusion sd, string folder)
    {
        var meta = Path.Combine(folder, MetadataFile);
        if (!Directory.Exists(folder)) throw new DmdInputException($"captioned image folder not found: {folder}");
        if (!File.Exists(meta))
            throw new DmdInputException($"{folder} has no {MetadataFile}: a captioned image folder lists its images, one JSON object a line: " +
                                        "{\"file_name\": \"a.png\", \"text\": \"a caption\"}");
        var items = new List<(string File, string Caption)>();
        int lineNo = 0;
        foreach (var line in File.ReadLines(meta))
        {
            lineNo++;
            if (string.IsNullOrWhiteSpace(line)) continue;
            string? file, text;
            try
            {
                var o = System.Text.Json.Nodes.JsonNode.Parse(line) as System.Text.Json.Nodes.JsonObject;
                file = o?["file_name"]?.GetValue<string>();
                text = o?["text"]?.GetValue<string>();
            }
            catch (Exception e) when (e is System.Text.Json.JsonException or InvalidOperationException)
            {
                throw new DmdInputException($"{meta} line {lineNo} is not a JSON object with string file_name and text ({e.Message})", e);
            }
            if (file is null || text is null)
                throw new DmdInputException($"{meta} line {lineNo}: needs \"file_name\" and \"text\" (got: {line.Trim()})");
            var path = Path.Combine(folder, file);
            if (!File.Exists(path)) throw new DmdInputException($"{meta} line {lineNo}: image not found: {path}");
            items.Add((path, text));
        }
        if (items.Count == 0) throw new DmdInputException($"{meta} lists no images");
        int size = sd.Unet.Config.SampleSize * sd.VaeScaleFactor, channels = (int)sd.Vae.Config.InChannels;
        return new CaptionedLatents(sd, items.Count, (n, g) =>
        {
            var pick = Rng.Integers(0, items.Count, n, g).data<long>().ToArray();
            var images = stack(pick.Select(i => ImageDataset.LoadFile(items[(int)i].File, size, channels)).ToArray());
            return (images, pick.Select(i => items[(int)i].Caption).ToArray());
        });
    }

    /// <summary>The latent shape.</summary>
    public int[] Shape { get; }

    /// <summary>The conditions' channels (the UNet's cross_attention_dim): the batch's second part is text contexts, not labels.</summary>
    public int NumClasses => sd.Unet.Config.CrossAttentionDim;

    /// <summary>Images held.</summary>
    public long Count { get; }

    /// <summary>Random images with their captions, as latents and text contexts (host tensors).</summary>
    public (Tensor X, Tensor? Labels) Batch(int n, Generator? g)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var (x, prompts) = draw(n, g);
        var dev = sd.Device;
        var mean = sd.Vae.Encode(x.to(dev)).Mean;
        var latents = mean * Diffusion.DenoiserExtensions.Const(sd.Vae.ScalingFactor, mean);
        return (latents.cpu().MoveToOuterDisposeScope(), sd.EncodePrompts(prompts).MoveToOuterDisposeScope());
    }
}
