using System.Text.RegularExpressions;

namespace Dmd.Tests;

/// <summary>
/// The library's layers (docs/ARCHITECTURE.md), lowest first: each folder of src/Dmd is one namespace and may use only
/// the layers below it, so the dependency graph has no cycles and a reader sees it from the folder names.
/// </summary>
public class LayeringTests
{
    static readonly string[] Layers = { "", "IO", "Data", "Diffusion", "Networks", "Metrics", "Training", "Distillation", "Pipelines" };

    [Fact]
    public void EachFolderIsOneNamespaceAndUsesOnlyTheLayersBelowIt()
    {
        var root = Path.Combine(TestUtil.RepoRoot, "src", "Dmd");
        var problems = new List<string>();
        int files = 0;
        foreach (var file in Directory.EnumerateFiles(root, "*.cs", SearchOption.AllDirectories))
        {
            var rel = Path.GetRelativePath(root, file);
            if (rel.StartsWith("obj") || rel.StartsWith("bin") || rel.StartsWith("build")) continue;
            files++;
            var folder = Path.GetDirectoryName(rel)!.Replace(Path.DirectorySeparatorChar, '.');
            int layer = Array.IndexOf(Layers, folder);
            if (layer < 0) { problems.Add($"{rel}: folder '{folder}' is not a layer"); continue; }
            var code = string.Join("\n", File.ReadLines(file).Where(l => !l.TrimStart().StartsWith("//")));
            var ns = Regex.Match(code, @"^namespace ([\w.]+);", RegexOptions.Multiline).Groups[1].Value;
            if (ns != (folder == "" ? "Dmd" : "Dmd." + folder)) problems.Add($"{rel}: namespace {ns} in folder '{folder}'");
            var used = Regex.Matches(code, @"^using (?:static )?Dmd\.(\w+)", RegexOptions.Multiline).Select(m => m.Groups[1].Value)
                .Concat(Regex.Matches(code, @"(?<![\w.])(?:Dmd\.)?(IO|Data|Diffusion|Networks|Metrics|Training|Distillation|Pipelines)\.[A-Z]\w*").Select(m => m.Groups[1].Value));
            foreach (var u in used.Distinct())
                if (Array.IndexOf(Layers, u) >= layer) problems.Add($"{rel}: layer {folder} uses {u}");
        }
        Assert.True(files > 40, $"only {files} source files found under {root}");
        Assert.True(problems.Count == 0, string.Join("\n", problems));
    }
}
