using System.Collections.Concurrent;
using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Data;

/// <summary>
/// CLIP's byte-level BPE tokenizer as Stable Diffusion pipelines call transformers' <c>CLIPTokenizer</c>
/// (<c>tokenizer(prompts, padding="max_length", max_length=77, truncation=True)</c>): read from a <c>tokenizer/</c>
/// folder (<c>vocab.json</c>, <c>merges.txt</c>, optional <c>tokenizer_config.json</c> and
/// <c>special_tokens_map.json</c>), it turns each prompt into <c>&lt;|startoftext|&gt; tokens &lt;|endoftext|&gt;</c>,
/// truncated so that the end token stays last and right-padded with the pad token (SD v1.5's is
/// <c>&lt;|endoftext|&gt;</c>, id 49407) to the context length (77).
/// </summary>
/// <remarks>
/// <para>Text cleaning is transformers' path without the <c>ftfy</c> package (the usual install of diffusers): control
/// characters, NUL and U+FFFD dropped, Unicode spaces made spaces, CJK ideographs split apart, NFC normalisation,
/// whitespace collapsed, Python's <c>str.lower()</c> (with <c>İ</c> to <c>i̇</c> and the final sigma). With ftfy installed
/// transformers instead runs <c>ftfy.fix_text</c>, which also repairs mojibake, straightens curly quotes, turns
/// full-width and ligature characters into plain ones and unescapes HTML entities: prompts with such characters can then
/// get other ids than here. Plain ASCII and ordinary accented text tokenise the same either way.</para>
/// <para>Then CLIP's pre-tokenisation (the special tokens, <c>'s 't 're 've 'm 'll 'd</c>, runs of letters, single
/// digits, runs of other non-space characters), each piece's UTF-8 bytes mapped to printable characters
/// (<c>bytes_to_unicode</c>), <c>&lt;/w&gt;</c> on the last symbol, and BPE merges in rank order, cached per piece.
/// Letter and digit classes come from .NET's Unicode tables, which may be a newer Unicode version than the
/// reference's: only characters assigned in between can differ.</para>
/// </remarks>
public sealed class ClipTokenizer
{
    /// <summary>CLIP's context length, the <c>model_max_length</c> of SD v1.5's tokenizer.</summary>
    public const int DefaultContextLength = 77;

    // transformers reads at most this many merges (the first line of merges.txt, the version header, is skipped)
    private const int MaxMerges = 49152 - 256 - 2;
    private static readonly string[] ByteEncoder = BytesToUnicode();

    private readonly Dictionary<string, int> encoder;
    private readonly Dictionary<(string, string), int> bpeRanks = new();
    private readonly ConcurrentDictionary<string, string[]> cache = new();

    /// <summary>Builds the tokenizer from a vocabulary (token to id) and the BPE merges in rank order.</summary>
    /// <param name="vocab">Token to id, as <c>vocab.json</c>.</param>
    /// <param name="merges">The merges, best first, as the lines of <c>merges.txt</c> after its header.</param>
    /// <param name="bosToken">Start token.</param>
    /// <param name="eosToken">End token.</param>
    /// <param name="padToken">Padding token.</param>
    /// <param name="unkToken">Token of a piece the vocabulary lacks.</param>
    /// <param name="contextLength">Length of every encoded prompt.</param>
    public ClipTokenizer(IReadOnlyDictionary<string, int> vocab, IEnumerable<(string, string)> merges,
        string bosToken = "<|startoftext|>", string eosToken = "<|endoftext|>", string padToken = "<|endoftext|>",
        string unkToken = "<|endoftext|>", int contextLength = DefaultContextLength)
    {
        if (contextLength < 2) throw new DmdInputException($"context length {contextLength} leaves no room for the start and end tokens; use 77");
        encoder = new Dictionary<string, int>(vocab);
        int rank = 0;
        foreach (var m in merges) bpeRanks[m] = rank++;  // a repeated merge keeps its last rank, as a Python dict does
        foreach (var (name, token) in new[] { ("start", bosToken), ("end", eosToken), ("pad", padToken), ("unknown", unkToken) })
            if (!encoder.ContainsKey(token))
                throw new DmdInputException($"the vocabulary lacks the {name} token {token}; use CLIP's vocab.json or name the token in special_tokens_map.json");
        BosToken = bosToken; EosToken = eosToken; PadToken = padToken; UnkToken = unkToken;
        BosId = encoder[bosToken]; EosId = encoder[eosToken]; PadId = encoder[padToken]; UnkId = encoder[unkToken];
        ContextLength = contextLength;
        cache[bosToken] = new[] { bosToken };
        cache[eosToken] = new[] { eosToken };
    }

    /// <summary>Length of every encoded prompt (77 for SD v1.5).</summary>
    public int ContextLength { get; }
    /// <summary>Number of tokens in the vocabulary (49408 for CLIP).</summary>
    public int VocabSize => encoder.Count;
    /// <summary>Start token, <c>&lt;|startoftext|&gt;</c>.</summary>
    public string BosToken { get; }
    /// <summary>End token, <c>&lt;|endoftext|&gt;</c>.</summary>
    public string EosToken { get; }
    /// <summary>Padding token (<c>&lt;|endoftext|&gt;</c> in SD v1.5, <c>!</c> in SD 2's tokenizer).</summary>
    public string PadToken { get; }
    /// <summary>Token of pieces the vocabulary lacks.</summary>
    public string UnkToken { get; }
    /// <summary>Id of <see cref="BosToken"/> (49406 in CLIP).</summary>
    public int BosId { get; }
    /// <summary>Id of <see cref="EosToken"/> (49407 in CLIP).</summary>
    public int EosId { get; }
    /// <summary>Id of <see cref="PadToken"/>.</summary>
    public int PadId { get; }
    /// <summary>Id of <see cref="UnkToken"/>.</summary>
    public int UnkId { get; }

    /// <summary>
    /// Reads a tokenizer folder in transformers' layout (SD v1.5's <c>tokenizer/</c>): <c>vocab.json</c> and
    /// <c>merges.txt</c>, and when present <c>tokenizer_config.json</c> then <c>special_tokens_map.json</c> for the
    /// special tokens (the later file wins) and <c>model_max_length</c>.
    /// </summary>
    public static ClipTokenizer FromFolder(string folder)
    {
        if (!Directory.Exists(folder)) throw new DmdInputException($"tokenizer folder not found: {folder} (pass the tokenizer/ folder of a Stable Diffusion model)");
        string vocabPath = Path.Combine(folder, "vocab.json"), mergesPath = Path.Combine(folder, "merges.txt");
        foreach (var p in new[] { vocabPath, mergesPath })
            if (!File.Exists(p)) throw new DmdInputException($"{p} not found; a CLIP tokenizer folder holds vocab.json and merges.txt");

        Dictionary<string, int> vocab;
        try { vocab = System.Text.Json.JsonSerializer.Deserialize<Dictionary<string, int>>(File.ReadAllText(vocabPath)) ?? throw new System.Text.Json.JsonException("empty"); }
        catch (System.Text.Json.JsonException e) { throw new DmdInputException($"{vocabPath} is not a JSON object of token ids ({e.Message}); use the tokenizer's own vocab.json", e); }

        // transformers: merges_file.read().strip().split("\n")[1 : 49152 - 256 - 2 + 1], each line split on whitespace
        var merges = new List<(string, string)>();
        foreach (var line in PyStrip(File.ReadAllText(mergesPath)).Split('\n').Skip(1).Take(MaxMerges))
        {
            var parts = line.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
            if (parts.Length == 0) continue;
            if (parts.Length != 2) throw new DmdInputException($"{mergesPath}: the merge line '{line}' does not hold two symbols; use the tokenizer's own merges.txt");
            merges.Add((parts[0], parts[1]));
        }

        string bos = "<|startoftext|>", eos = "<|endoftext|>", pad = "<|endoftext|>", unk = "<|endoftext|>";
        int contextLength = DefaultContextLength;
        foreach (var file in new[] { "tokenizer_config.json", "special_tokens_map.json" })
        {
            var path = Path.Combine(folder, file);
            if (!File.Exists(path)) continue;
            JsonObject json;
            try { json = JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw new System.Text.Json.JsonException("not a JSON object"); }
            catch (System.Text.Json.JsonException e) { throw new DmdInputException($"{path} is not valid JSON ({e.Message}); fix or remove it", e); }
            bos = SpecialToken(json, "bos_token") ?? bos;
            eos = SpecialToken(json, "eos_token") ?? eos;
            pad = SpecialToken(json, "pad_token") ?? pad;
            unk = SpecialToken(json, "unk_token") ?? unk;
            // transformers writes 1e30 for "no limit"; a CLIP text encoder has 77 positions whatever the file says then
            if (json["model_max_length"] is JsonValue v && v.TryGetValue<double>(out var len) && len >= 2 && len <= 1e6)
                contextLength = (int)len;
        }
        return new ClipTokenizer(vocab, merges, bos, eos, pad, unk, contextLength);
    }

    /// <summary>A special token from a config file: a string, or an AddedToken object with its <c>content</c>.</summary>
    private static string? SpecialToken(JsonObject json, string key) => json[key] switch
    {
        JsonValue v when v.TryGetValue<string>(out var s) => s,
        JsonObject o when o["content"] is JsonValue c && c.TryGetValue<string>(out var s) => s,
        _ => null,
    };

    /// <summary>
    /// The ids of each prompt, <c>[B, ContextLength]</c> int64: start token, at most <c>ContextLength - 2</c> tokens of
    /// the prompt, end token, padding.
    /// </summary>
    public Tensor Encode(IReadOnlyList<string> prompts)
    {
        var ids = new long[prompts.Count * ContextLength];
        for (int b = 0; b < prompts.Count; b++)
        {
            var row = EncodeIds(prompts[b]);
            for (int t = 0; t < ContextLength; t++) ids[b * ContextLength + t] = row[t];
        }
        return tensor(ids, new long[] { prompts.Count, ContextLength }, ScalarType.Int64);
    }

    /// <summary>The ids of one prompt, <see cref="ContextLength"/> of them: start, tokens (truncated), end, padding.</summary>
    public int[] EncodeIds(string prompt)
    {
        var ids = new int[ContextLength];
        Array.Fill(ids, PadId);
        ids[0] = BosId;
        int n = 1;
        foreach (var token in Tokenize(prompt))
        {
            if (n == ContextLength - 1) break;
            ids[n++] = encoder.TryGetValue(token, out var id) ? id : UnkId;
        }
        ids[n] = EosId;
        return ids;
    }

    /// <summary>
    /// The BPE tokens of a prompt, without start and end tokens and untruncated (transformers' <c>tokenize</c>): the
    /// special tokens written in the text are split off first and kept whole, the rest is cleaned, pre-tokenised and
    /// BPE-encoded.
    /// </summary>
    public List<string> Tokenize(string text)
    {
        var tokens = new List<string>();
        foreach (var piece in SplitSpecial(text))
        {
            if (piece == BosToken || piece == EosToken) { tokens.Add(piece); continue; }
            foreach (var word in PreTokenize(Clean(piece)))
            {
                var bytes = Encoding.UTF8.GetBytes(word);
                var sb = new StringBuilder(bytes.Length);
                foreach (var b in bytes) sb.Append(ByteEncoder[b]);
                tokens.AddRange(Bpe(sb.ToString()));
            }
        }
        return tokens;
    }

    /// <summary>The text split around exact occurrences of the start and end tokens, which become pieces of their own.</summary>
    private List<string> SplitSpecial(string text)
    {
        var pieces = new List<string> { text };
        foreach (var special in new[] { BosToken, EosToken })
        {
            var split = new List<string>();
            foreach (var p in pieces)
            {
                if (p == BosToken || p == EosToken) { split.Add(p); continue; }
                var parts = p.Split(special);
                for (int i = 0; i < parts.Length; i++)
                {
                    if (i > 0) split.Add(special);
                    split.Add(parts[i]);
                }
            }
            pieces = split;
        }
        return pieces;
    }

    // ---- transformers' BasicTokenizer(strip_accents=False, do_split_on_punc=False), the cleaning without ftfy ----

    /// <summary>
    /// Control characters (and NUL, U+FFFD) dropped, whitespace made spaces, spaces around CJK ideographs, NFC,
    /// whitespace-split, each word lowercased as Python's <c>str.lower()</c> does, words joined by single spaces.
    /// </summary>
    internal static string Clean(string text)
    {
        var sb = new StringBuilder(text.Length + 8);
        foreach (var r in text.EnumerateRunes())
        {
            int cp = r.Value;
            if (cp == 0 || cp == 0xFFFD || IsControl(r)) continue;
            if (IsWhitespace(r)) sb.Append(' ');
            else if (IsCjk(cp)) sb.Append(' ').Append(r.ToString()).Append(' ');
            else sb.Append(r.ToString());
        }
        var normalized = sb.ToString().Normalize(NormalizationForm.FormC);
        var words = normalized.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries).Select(PyLower);
        return string.Join(' ', words);
    }

    private static bool IsWhitespace(Rune r) =>
        r.Value is ' ' or '\t' or '\n' or '\r' || Rune.GetUnicodeCategory(r) == UnicodeCategory.SpaceSeparator;

    /// <summary>transformers' <c>_is_control</c>: a "C*" category other than tab, newline and carriage return.</summary>
    private static bool IsControl(Rune r)
    {
        if (r.Value is '\t' or '\n' or '\r') return false;
        return Rune.GetUnicodeCategory(r) is UnicodeCategory.Control or UnicodeCategory.Format or UnicodeCategory.Surrogate
            or UnicodeCategory.PrivateUse or UnicodeCategory.OtherNotAssigned;
    }

    private static bool IsCjk(int cp) =>
        (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) || (cp >= 0x20000 && cp <= 0x2A6DF)
        || (cp >= 0x2A700 && cp <= 0x2B73F) || (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B820 && cp <= 0x2CEAF)
        || (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);

    /// <summary>
    /// Python's <c>str.lower()</c>: Unicode's simple lowercase, plus its two special cases, U+0130 (İ) to "i" and
    /// U+0307, and capital sigma to final sigma (ς) after a cased letter when no cased letter follows.
    /// </summary>
    internal static string PyLower(string word)
    {
        var runes = word.EnumerateRunes().ToArray();
        var sb = new StringBuilder(word.Length + 2);
        for (int i = 0; i < runes.Length; i++)
        {
            var r = runes[i];
            if (r.Value == 0x130) sb.Append("i\u0307");
            else if (r.Value == 0x3A3) sb.Append(IsFinalSigma(runes, i) ? 'ς' : 'σ');
            else sb.Append(Rune.ToLowerInvariant(r).ToString());
        }
        return sb.ToString();
    }

    private static bool IsFinalSigma(Rune[] runes, int i)
    {
        int j = i - 1;
        while (j >= 0 && IsCaseIgnorable(runes[j])) j--;
        if (j < 0 || !IsCased(runes[j])) return false;
        j = i + 1;
        while (j < runes.Length && IsCaseIgnorable(runes[j])) j++;
        return j == runes.Length || !IsCased(runes[j]);
    }

    private static bool IsCased(Rune r) =>
        Rune.GetUnicodeCategory(r) is UnicodeCategory.UppercaseLetter or UnicodeCategory.LowercaseLetter or UnicodeCategory.TitlecaseLetter;

    private static bool IsCaseIgnorable(Rune r) =>
        Rune.GetUnicodeCategory(r) is UnicodeCategory.NonSpacingMark or UnicodeCategory.EnclosingMark or UnicodeCategory.Format
            or UnicodeCategory.ModifierLetter or UnicodeCategory.ModifierSymbol
        || r.Value is '\'' or '.' or ':' or 0xB7 or 0x2018 or 0x2019 or 0x2024 or 0x2027 or 0xFE13 or 0xFE52 or 0xFE55 or 0xFF07 or 0xFF0E or 0xFF1A;

    // ---- CLIP's pre-tokenisation and BPE ----

    private static readonly string[] Contractions = { "'s", "'t", "'re", "'ve", "'m", "'ll", "'d" };

    /// <summary>
    /// The matches of CLIP's pattern <c>&lt;\|startoftext\|&gt;|&lt;\|endoftext\|&gt;|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+</c>
    /// (case-insensitive), scanned by code point so that letters outside the BMP count as letters.
    /// </summary>
    internal static List<string> PreTokenize(string text)
    {
        var words = new List<string>();
        int i = 0;
        while (i < text.Length)
        {
            string? literal = null;
            foreach (var special in new[] { "<|startoftext|>", "<|endoftext|>" })
                if (string.Compare(text, i, special, 0, special.Length, StringComparison.OrdinalIgnoreCase) == 0) { literal = special; break; }
            literal ??= Contractions.FirstOrDefault(c => ContractionAt(text, i, c));
            if (literal is not null)
            {
                words.Add(text.Substring(i, literal.Length));
                i += literal.Length;
                continue;
            }
            var kind = Kind(text, i);
            int start = i;
            if (kind == CharKind.Space) { i += Rune.GetRuneAt(text, i).Utf16SequenceLength; continue; }
            i += Rune.GetRuneAt(text, i).Utf16SequenceLength;
            if (kind != CharKind.Number)  // a run of letters, or of other characters; a digit stands alone
                while (i < text.Length && Kind(text, i) == kind) i += Rune.GetRuneAt(text, i).Utf16SequenceLength;
            words.Add(text[start..i]);
        }
        return words;
    }

    /// <summary>A contraction at <paramref name="i"/>, matched as Python's <c>regex</c> does with IGNORECASE.</summary>
    private static bool ContractionAt(string text, int i, string c)
    {
        if (i + c.Length > text.Length) return false;
        for (int k = 0; k < c.Length; k++)
        {
            char t = char.ToLowerInvariant(text[i + k]);
            if (t != c[k] && !(c[k] == 's' && t == 'ſ')) return false;  // long s case-folds to s
        }
        return true;
    }

    private enum CharKind { Space, Letter, Number, Other }

    private static CharKind Kind(string text, int i)
    {
        var r = Rune.GetRuneAt(text, i);
        if (Rune.IsWhiteSpace(r)) return CharKind.Space;
        return Rune.GetUnicodeCategory(r) switch
        {
            UnicodeCategory.UppercaseLetter or UnicodeCategory.LowercaseLetter or UnicodeCategory.TitlecaseLetter
                or UnicodeCategory.ModifierLetter or UnicodeCategory.OtherLetter => CharKind.Letter,
            UnicodeCategory.DecimalDigitNumber or UnicodeCategory.LetterNumber or UnicodeCategory.OtherNumber => CharKind.Number,
            _ => CharKind.Other,
        };
    }

    /// <summary>
    /// CLIP's <c>bpe</c>: the piece's symbols with <c>&lt;/w&gt;</c> on the last, then repeatedly the adjacent pair of
    /// lowest merge rank merged everywhere, left to right, until no ranked pair is left.
    /// </summary>
    private string[] Bpe(string token) => cache.GetOrAdd(token, t =>
    {
        var word = new List<string>(t.Length);
        for (int k = 0; k < t.Length - 1; k++) word.Add(t[k].ToString());
        word.Add(t[^1] + "</w>");
        while (word.Count > 1)
        {
            (string, string)? best = null;
            int bestRank = int.MaxValue;
            for (int k = 0; k + 1 < word.Count; k++)
                if (bpeRanks.TryGetValue((word[k], word[k + 1]), out var rank) && rank < bestRank) { bestRank = rank; best = (word[k], word[k + 1]); }
            if (best is null) break;
            var (first, second) = best.Value;
            var merged = new List<string>(word.Count);
            for (int k = 0; k < word.Count; k++)
            {
                if (word[k] == first && k + 1 < word.Count && word[k + 1] == second) { merged.Add(first + second); k++; }
                else merged.Add(word[k]);
            }
            word = merged;
        }
        return word.ToArray();
    });

    /// <summary>
    /// CLIP's <c>bytes_to_unicode</c>: each byte as a printable character, itself for the printable Latin-1 bytes
    /// (<c>!</c>..<c>~</c>, <c>¡</c>..<c>¬</c>, <c>®</c>..<c>ÿ</c>), U+0100 onwards in byte order for the others.
    /// </summary>
    internal static string[] BytesToUnicode()
    {
        var map = new string[256];
        int n = 0;
        for (int b = 0; b < 256; b++)
        {
            bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            map[b] = ((char)(printable ? b : 256 + n++)).ToString();
        }
        return map;
    }

    /// <summary>Python's <c>str.strip()</c>: leading and trailing whitespace removed.</summary>
    private static string PyStrip(string s) => s.Trim();
}
