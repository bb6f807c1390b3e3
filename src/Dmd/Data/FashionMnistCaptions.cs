using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace Dmd.Data;

/// <summary>
/// Templated captions of Fashion-MNIST for a text-to-image teacher: the ten class names, a handful of caption templates
/// drawn at random for training, one fixed evaluation prompt per class (<see cref="PromptFor"/>), the class a prompt
/// names (<see cref="ClassOf"/>, to score prompt following with the Fashion-MNIST classifier), and a CLIP-style
/// tokenizer folder whose merges turn every caption word into one token (<see cref="WriteTokenizer"/>).
/// </summary>
public static class FashionMnistCaptions
{
    /// <summary>The class names in label order, as prompts spell them (lower case, <c>t-shirt</c> for "T-shirt/top").</summary>
    public static readonly IReadOnlyList<string> ClassNames = new[]
    {
        "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
    };

    /// <summary>The training caption templates; <c>{name}</c> stands for the class name. The first is the evaluation prompt.</summary>
    public static readonly IReadOnlyList<string> Templates = new[]
    {
        "a photo of a {name}",
        "a {name}",
        "{name}",
        "a picture of a {name}, product photo",
        "a {name} on a plain background",
        "a black and white photo of a {name}",
        "a small grayscale image of a {name}",
        "a product photo of a {name}",
        "an image of a {name}, centered",
        "a low resolution picture of the {name}",
    };

    /// <summary>The fixed evaluation prompt of class <paramref name="cls"/>: "a photo of a {name}".</summary>
    public static string PromptFor(int cls)
    {
        if (cls < 0 || cls >= ClassNames.Count) throw new DmdInputException($"class {cls}: Fashion-MNIST classes are 0 to {ClassNames.Count - 1}");
        return Fill(Templates[0], cls);
    }

    /// <summary>Caption of class <paramref name="cls"/> with template <paramref name="template"/> (an index into <see cref="Templates"/>).</summary>
    public static string Caption(int cls, int template) => Fill(Templates[template], cls);

    /// <summary>Every caption the templates make (classes x templates), class-major.</summary>
    public static IEnumerable<string> AllCaptions() =>
        Enumerable.Range(0, ClassNames.Count).SelectMany(c => Enumerable.Range(0, Templates.Count).Select(t => Caption(c, t)));

    private static string Fill(string template, int cls) => template.Replace("{name}", ClassNames[cls]);

    // longest names first, so "t-shirt" is not read as "shirt" and "ankle boot" wins over any shorter name
    private static readonly (int Class, Regex Pattern)[] Patterns = ClassNames
        .Select((n, i) => (i, new Regex(@"(?<![\p{L}\p{N}-])" + Regex.Escape(n).Replace(@"\ ", @"\s+") + @"(?:s|es)?(?![\p{L}\p{N}-])",
                                         RegexOptions.IgnoreCase | RegexOptions.CultureInvariant)))
        .OrderByDescending(p => ClassNames[p.i].Length).ToArray();

    /// <summary>
    /// The class a prompt names (case-insensitive, whole words, plural -s allowed), or -1 when it names none or more than
    /// one class. "a photo of a t-shirt" is 0, not 6: a longer name is matched first and its text removed.
    /// </summary>
    public static int ClassOf(string prompt)
    {
        int found = -1;
        var text = prompt;
        foreach (var (cls, pattern) in Patterns)
        {
            if (!pattern.IsMatch(text)) continue;
            if (found >= 0) return -1;
            found = cls;
            text = pattern.Replace(text, " ");
        }
        return found;
    }

    /// <summary>Writes <paramref name="perClass"/> copies of each class's evaluation prompt, one per line, class by class.</summary>
    public static void WritePrompts(string path, int perClass)
    {
        if (perClass < 1) throw new DmdInputException($"{perClass} prompts per class: give at least 1");
        var dir = Path.GetDirectoryName(Path.GetFullPath(path));
        if (dir is not null) Directory.CreateDirectory(dir);
        var lines = Enumerable.Range(0, ClassNames.Count).SelectMany(c => Enumerable.Repeat(PromptFor(c), perClass));
        File.WriteAllText(path, string.Join('\n', lines) + "\n");
    }

    /// <summary>The pre-tokenised words of every caption (CLIP splits "t-shirt" into t, -, shirt), each once, in first-seen order.</summary>
    public static IReadOnlyList<string> Words()
    {
        var words = new List<string>();
        var seen = new HashSet<string>();
        foreach (var caption in AllCaptions())
            foreach (var w in ClipTokenizer.PreTokenize(ClipTokenizer.Clean(caption)))
                if (seen.Add(w)) words.Add(w);
        return words;
    }

    /// <summary>
    /// Builds a CLIP-style byte-level BPE vocabulary whose merges make every caption word one token: the 256 byte
    /// symbols, their <c>&lt;/w&gt;</c> (end-of-word) forms, one merge per step of each word built left to right (a merge
    /// is added only when the merges so far leave the word in several pieces, so earlier words keep their single token),
    /// then <c>&lt;|startoftext|&gt;</c> and <c>&lt;|endoftext|&gt;</c>. Returns (vocab, merges in rank order).
    /// </summary>
    public static (Dictionary<string, int> Vocab, List<(string, string)> Merges) BuildVocabulary()
    {
        var bytes = ClipTokenizer.BytesToUnicode();
        var vocab = new Dictionary<string, int>();
        foreach (var s in bytes) vocab[s] = vocab.Count;
        foreach (var s in bytes) vocab[s + "</w>"] = vocab.Count;
        var merges = new List<(string, string)>();
        var specials = new Dictionary<string, int>(vocab) { ["<|startoftext|>"] = -1, ["<|endoftext|>"] = -2 };
        foreach (var word in Words())
        {
            while (true)
            {
                // the real tokenizer with the merges so far: where it leaves this word in pieces, join the first two
                var pieces = new ClipTokenizer(specials, merges).Tokenize(word);
                if (pieces.Count == 1) break;
                merges.Add((pieces[0], pieces[1]));
                var joined = pieces[0] + pieces[1];
                if (!vocab.ContainsKey(joined)) { vocab[joined] = vocab.Count; specials[joined] = vocab[joined]; }
            }
        }
        vocab["<|startoftext|>"] = vocab.Count;
        vocab["<|endoftext|>"] = vocab.Count;
        return (vocab, merges);
    }

    /// <summary>
    /// Writes a transformers <c>CLIPTokenizer</c> folder for the captions (<see cref="BuildVocabulary"/>): <c>vocab.json</c>,
    /// <c>merges.txt</c> (with its <c>#version</c> header), <c>tokenizer_config.json</c> and <c>special_tokens_map.json</c>
    /// (SD v1.5's special tokens, 77 positions). Returns the vocabulary size.
    /// </summary>
    public static int WriteTokenizer(string folder)
    {
        Directory.CreateDirectory(folder);
        var (vocab, merges) = BuildVocabulary();
        File.WriteAllText(Path.Combine(folder, "vocab.json"), JsonSerializer.Serialize(vocab));
        var sb = new StringBuilder("#version: 0.2\n");
        foreach (var (a, b) in merges) sb.Append(a).Append(' ').Append(b).Append('\n');
        File.WriteAllText(Path.Combine(folder, "merges.txt"), sb.ToString());
        JsonObject Special(string s) => new() { ["content"] = s, ["lstrip"] = false, ["normalized"] = true, ["rstrip"] = false, ["single_word"] = false };
        var map = new JsonObject
        {
            ["bos_token"] = Special("<|startoftext|>"), ["eos_token"] = Special("<|endoftext|>"),
            ["pad_token"] = "<|endoftext|>", ["unk_token"] = Special("<|endoftext|>"),
        };
        var config = new JsonObject
        {
            ["add_prefix_space"] = false, ["bos_token"] = Special("<|startoftext|>"), ["do_lower_case"] = true,
            ["eos_token"] = Special("<|endoftext|>"), ["errors"] = "replace", ["model_max_length"] = ClipTokenizer.DefaultContextLength,
            ["pad_token"] = "<|endoftext|>", ["tokenizer_class"] = "CLIPTokenizer", ["unk_token"] = Special("<|endoftext|>"),
        };
        var indented = new JsonSerializerOptions { WriteIndented = true };
        File.WriteAllText(Path.Combine(folder, "special_tokens_map.json"), map.ToJsonString(indented));
        File.WriteAllText(Path.Combine(folder, "tokenizer_config.json"), config.ToJsonString(indented));
        return vocab.Count;
    }
}
