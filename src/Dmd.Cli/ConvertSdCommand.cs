using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using Dmd.Pipelines;
using Spectre.Console;

namespace Dmd.Cli;

/// <summary>`dmd convert-sd`: a Stable Diffusion v1.x single-file checkpoint into a diffusers folder every other command reads.</summary>
internal static class ConvertSdCommand
{
    public static Command Build()
    {
        var cmd = new Command("convert-sd", "Convert a Stable Diffusion v1.x single-file checkpoint (the original layout: v1-5-pruned-emaonly.safetensors, or a .ckpt) " +
                                            "into a diffusers folder (tokenizer/, text_encoder/, unet/, vae/, scheduler/) that text2img, pairs, distill, eval and bench read.");
        var file = new Argument<string>("checkpoint") { Description = "the single-file checkpoint (.safetensors, or .ckpt / .pt: a PyTorch zip pickle)" };
        var outOpt = new Option<string>("--out", "-o") { Description = "the diffusers folder to write (new or empty)", Required = true };
        var tokenizer = new Option<string?>("--tokenizer") { Description = "a CLIP tokenizer folder (vocab.json, merges.txt): a single file holds none; e.g. the tokenizer/ folder of any SD v1.x diffusers folder" };
        var config = new Option<string?>("--config") { Description = "a diffusers Stable Diffusion folder whose config.json files, tokenizer/ and scheduler/ describe the checkpoint (its weights are not read); default: SD v1.x's architecture read off the weights' shapes, SD v1.5's scheduler" };
        cmd.Arguments.Add(file);
        foreach (var o in new Option[] { outOpt, tokenizer, config }) cmd.Options.Add(o);
        cmd.SetAction(r =>
        {
            var clock = Stopwatch.StartNew();
            var outDir = r.GetValue(outOpt)!;
            StableDiffusion.ConvertSingleFile(r.GetValue(file)!, outDir, new SingleFileOptions { TokenizerFolder = r.GetValue(tokenizer), ConfigFolder = r.GetValue(config) });
            using var sd = StableDiffusion.Load(outDir);   // what every command will read: proves the folder loads
            long Count(TorchSharp.torch.nn.Module m) => m.parameters().Sum(p => p.numel());
            AnsiConsole.MarkupLine(Markup.Escape(string.Create(CultureInfo.InvariantCulture,
                $"wrote {outDir}: UNet {Count(sd.Unet) / 1e6:F1} M, VAE {Count(sd.Vae) / 1e6:F1} M, text encoder {Count(sd.TextEncoder) / 1e6:F1} M parameters, " +
                $"{sd.DefaultSize}x{sd.DefaultSize} images by default ({clock.Elapsed.TotalSeconds:F1} s)")));
            return 0;
        });
        return cmd;
    }
}
