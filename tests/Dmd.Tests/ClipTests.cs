using System.Text.Json;
using Xunit.Abstractions;
using Dmd.Data;
using Dmd.Networks;
using TorchSharp;
using TorchSharp.PyBridge;
using static TorchSharp.torch;

namespace Dmd.Tests;

/// <summary>
/// Stable Diffusion v1.5's text side against transformers (TestData/clip_parity/README.md): CLIPTokenizer's ids on a
/// toy vocabulary, CLIPTextModel's last_hidden_state on a tiny random model, and the full-size model's parameter names.
/// </summary>
public class ClipTests(ITestOutputHelper log)
{
    private static string Fixture(params string[] parts) =>
        Path.Combine(new[] { AppContext.BaseDirectory, "TestData", "clip_parity" }.Concat(parts).ToArray());

    private static ClipTokenizer Tokenizer() => ClipTokenizer.FromFolder(Fixture("tokenizer"));

    private sealed record Case(string prompt, int[] ids);

    private static List<Case> Cases() => JsonSerializer.Deserialize<List<Case>>(File.ReadAllText(Fixture("tokenizer_cases.json")))!;

    // ------------------------------------------------------------------------------------------------ tokenizer

    [Fact]
    public void ClipTokenizerGivesTransformersIdsOnHundredsOfPrompts()
    {
        var tok = Tokenizer();
        var cases = Cases();
        Assert.True(cases.Count >= 300, $"only {cases.Count} prompts in the fixture");
        var wrong = new List<string>();
        foreach (var c in cases)
        {
            var ids = tok.EncodeIds(c.prompt);
            if (!ids.SequenceEqual(c.ids))
                wrong.Add($"{JsonSerializer.Serialize(c.prompt)}: ours [{string.Join(",", ids.TakeWhile((_, i) => i < 20))}...] " +
                          $"vs transformers [{string.Join(",", c.ids.TakeWhile((_, i) => i < 20))}...]");
        }
        log.WriteLine($"{cases.Count - wrong.Count} of {cases.Count} prompts give transformers' ids");
        Assert.True(wrong.Count == 0, $"{wrong.Count} of {cases.Count} prompts differ:\n" + string.Join("\n", wrong.Take(20)));
    }

    [Fact]
    public void ClipTokenizerReadsSpecialTokensAndLengthFromTheFolder()
    {
        var tok = Tokenizer();
        var vocab = JsonSerializer.Deserialize<Dictionary<string, int>>(File.ReadAllText(Fixture("tokenizer", "vocab.json")))!;
        Assert.Equal(77, tok.ContextLength);
        Assert.Equal(vocab["<|startoftext|>"], tok.BosId);
        Assert.Equal(vocab["<|endoftext|>"], tok.EosId);
        Assert.Equal(tok.EosId, tok.PadId);  // SD v1.5 pads with the end token
        Assert.Equal(vocab.Count, tok.VocabSize);

        // SD 2's tokenizer pads with "!": special_tokens_map.json wins over tokenizer_config.json
        var dir = Directory.CreateTempSubdirectory("clip_tok_").FullName;
        try
        {
            foreach (var f in Directory.GetFiles(Fixture("tokenizer"))) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
            var map = File.ReadAllText(Path.Combine(dir, "special_tokens_map.json")).Replace("\"pad_token\": \"<|endoftext|>\"", "\"pad_token\": \"!\"");
            Assert.Contains("\"pad_token\": \"!\"", map);
            File.WriteAllText(Path.Combine(dir, "special_tokens_map.json"), map);
            File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), "{\"model_max_length\": 16}");
            var sd2 = ClipTokenizer.FromFolder(dir);
            Assert.Equal(vocab["!"], sd2.PadId);
            Assert.Equal(16, sd2.ContextLength);
            var ids = sd2.EncodeIds("a cat");
            Assert.Equal(new[] { sd2.BosId, vocab["a</w>"], vocab["cat</w>"], sd2.EosId }, ids.Take(4));
            Assert.All(ids.Skip(4), id => Assert.Equal(vocab["!"], id));
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [Fact]
    public void ClipTokenizerTruncatesWithTheEndTokenLastAndEncodesABatch()
    {
        var tok = Tokenizer();
        var ids = tok.EncodeIds(string.Join(" ", Enumerable.Repeat("cat", 200)));
        Assert.Equal(77, ids.Length);
        Assert.Equal(tok.BosId, ids[0]);
        Assert.Equal(tok.EosId, ids[76]);
        Assert.DoesNotContain(tok.EosId, ids.Take(76));

        using var batch = tok.Encode(new[] { "a photo of a cat", "", string.Join(" ", Enumerable.Repeat("dog", 100)) });
        Assert.Equal(new long[] { 3, 77 }, batch.shape);
        Assert.Equal(ScalarType.Int64, batch.dtype);
        Assert.Equal(tok.EncodeIds("").Select(i => (long)i), batch[1].data<long>().ToArray());
        Assert.Equal(new long[] { tok.BosId, tok.EosId, tok.PadId }, batch[1].data<long>().Take(3).ToArray());
    }

    [Fact]
    public void ClipTokenizerFolderErrorsNameTheFix()
    {
        var e = Assert.Throws<DmdInputException>(() => ClipTokenizer.FromFolder(Path.Combine(Path.GetTempPath(), "no-such-clip-tokenizer")));
        Assert.DoesNotContain('\n', e.Message);
        var dir = Directory.CreateTempSubdirectory("clip_tok_").FullName;
        try
        {
            File.Copy(Fixture("tokenizer", "vocab.json"), Path.Combine(dir, "vocab.json"));
            Assert.Contains("merges.txt", Assert.Throws<DmdInputException>(() => ClipTokenizer.FromFolder(dir)).Message);
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    // ------------------------------------------------------------------------------------------------ text model

    [Fact]
    public void ClipTextModelReproducesTransformersLastHiddenState()
    {
        using var scope = NewDisposeScope();
        var io = Safetensors.LoadStateDict(Fixture("text_encoder_io.safetensors"));
        using var model = ClipTextModel.FromFolder(Fixture("text_encoder"));  // the file also holds position_ids: ignored
        using var noGrad = no_grad();
        var y = model.forward(io["io.input_ids"]);
        Assert.Equal(io["io.last_hidden_state"].shape, y.shape);
        double d = (y - io["io.last_hidden_state"]).abs().max().item<float>();
        double scale = io["io.last_hidden_state"].abs().max().item<float>();
        log.WriteLine($"max |ours - transformers| = {d:E2} (outputs up to {scale:F2})");
        Assert.True(d < 2e-5, $"max |ours - transformers| = {d:E2}");

        // the fixture's ids are the tokenizer's: the two halves meet
        var prompts = new[]
        {
            "a photo of a cat", "It's a dog's life, isn't it? They're here; we'll go; I'd say; you've; I'm", "café",
            string.Join(", ", Enumerable.Repeat("highly detailed", 30)),
        };
        Assert.True(TestUtil.Same(io["io.input_ids"], Tokenizer().Encode(prompts)));
    }

    [Fact]
    public void ClipTextModelReadsConfigJson()
    {
        var config = ClipTextConfig.Load(Fixture("text_encoder", "config.json"));
        var vocab = JsonSerializer.Deserialize<Dictionary<string, int>>(File.ReadAllText(Fixture("tokenizer", "vocab.json")))!;
        Assert.Equal(new ClipTextConfig(vocab.Count, 64, 256, 2, 2, 77, "quick_gelu", 1e-5), config);

        var dir = Directory.CreateTempSubdirectory("clip_cfg_").FullName;
        try
        {
            var path = Path.Combine(dir, "config.json");
            File.WriteAllText(path, "{\"hidden_size\": 64, \"num_attention_heads\": 3}");
            var e = Assert.Throws<DmdInputException>(() => ClipTextConfig.Load(path));
            Assert.Contains("num_attention_heads", e.Message);
            File.WriteAllText(path, "{\"hidden_act\": \"relu\"}");
            Assert.Contains("hidden_act", Assert.Throws<DmdInputException>(() => ClipTextConfig.Load(path)).Message);
            File.WriteAllText(path, "{\"text_config\": {\"hidden_size\": 32, \"num_attention_heads\": 4}}");  // a full CLIPConfig
            Assert.Equal(32, ClipTextConfig.Load(path).HiddenSize);
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [Theory]
    [InlineData("misshaped", "text_model.encoder.layers.1.mlp.fc2.weight")]
    [InlineData("missing", "text_model.final_layer_norm.bias")]
    [InlineData("unexpected", "text_model.encoder.layers.2.mlp.fc1.weight")]
    public void ClipTextModelWeightMismatchIsOneLineNamingTheTensor(string kind, string name)
    {
        var dir = Directory.CreateTempSubdirectory("clip_enc_").FullName;
        try
        {
            File.Copy(Fixture("text_encoder", "config.json"), Path.Combine(dir, "config.json"));
            var w = Safetensors.LoadStateDict(Fixture("text_encoder", "model.safetensors"));
            if (kind == "misshaped") w[name] = w[name][.., ..^1].contiguous();
            else if (kind == "missing") w.Remove(name);
            else w[name] = zeros(4, 4);
            Safetensors.SaveStateDict(Path.Combine(dir, "model.safetensors"), w);
            var e = Assert.Throws<DmdInputException>(() => ClipTextModel.FromFolder(dir));
            log.WriteLine(e.Message);
            Assert.Contains(name, e.Message);
            Assert.Contains(kind == "misshaped" ? "mis-shaped" : kind, e.Message);
            Assert.DoesNotContain('\n', e.Message);
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [Fact]
    public void ClipTextModelIsCausalAndRejectsBadIds()
    {
        using var scope = NewDisposeScope();
        using var model = ClipTextModel.FromFolder(Fixture("text_encoder"));
        var io = Safetensors.LoadStateDict(Fixture("text_encoder_io.safetensors"));
        using var noGrad = no_grad();
        var ids = io["io.input_ids"][..1].clone();
        var changed = ids.clone();
        changed[0, 40] = tensor(5L);
        var a = model.forward(ids);
        var b = model.forward(changed);
        Assert.True(TestUtil.Same(a[.., ..40], b[.., ..40]), "a later token changed earlier states: the causal mask is missing");
        Assert.True((a[.., 40..] - b[.., 40..]).abs().max().item<float>() > 1e-3);

        Assert.Throws<DmdInputException>(() => model.forward(full(1, 78, 5L)));
        Assert.Throws<DmdInputException>(() => model.forward(full(1, 77, (long)model.Config.VocabSize)));
        Assert.Throws<DmdInputException>(() => model.forward(zeros(1, 77)));
    }

    [Fact]
    public void ClipTextModelHasSd15TextEncoderNamesAndShapes()
    {
        var expected = File.ReadAllLines(Fixture("sd15_text_encoder_params.txt")).Where(l => l.Length > 0).ToList();
        Assert.Equal(196, expected.Count);
        using var model = new ClipTextModel(ClipTextConfig.StableDiffusion15);
        var ours = model.state_dict().Select(kv => $"{kv.Key} {string.Join(",", kv.Value.shape)}").ToList();
        Assert.Equal(expected.Order(), ours.Order());
        Assert.Equal(123_060_480L, model.parameters().Sum(p => p.numel()));
    }
}
