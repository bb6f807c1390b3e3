using System.CommandLine;
using System.Globalization;
using System.Reflection;
using System.Text.Json;
using System.Text.RegularExpressions;
using System.Xml.Linq;
using Dmd.IO;

namespace Dmd.Cli;

/// <summary>
/// Turns every field of a config record into a command-line option (<c>--prefix-field-name VALUE</c>), so a run's
/// hyper-parameters are all visible in one place (the record) and overridable without a list kept by hand.
/// Nested records get their own prefix (e.g. <c>--teacher-steps</c>, <c>--dmd-learning-rate</c>).
/// </summary>
internal sealed class ConfigOptions<T> where T : class, new()
{
    private readonly List<(string Path, PropertyInfo[] Chain, Option<string> Option)> options = new();

    public ConfigOptions(Command command, string prefix = "", Dictionary<string, string>? nestedPrefixes = null, T? defaults = null)
    {
        defaults ??= new T();
        Collect(typeof(T), defaults, prefix, Array.Empty<PropertyInfo>(), nestedPrefixes ?? new());
        foreach (var o in options)
        {
            // a setting's doc naming another setting (<see cref="LpipsWeights"/>) names that setting's option, in the same record first
            o.Option.Description = CrefMark.Replace(o.Option.Description ?? "", m =>
            {
                var named = options.Where(q => Id(q.Chain[^1]) == m.Groups[1].Value)
                                   .OrderBy(q => q.Chain[..^1].SequenceEqual(o.Chain[..^1]) ? 0 : 1).ToList();
                return named.Count > 0 ? named[0].Path : m.Groups[1].Value.Split('.')[^1];
            });
            command.Options.Add(o.Option);
        }
    }

    void Collect(Type type, object defaults, string prefix, PropertyInfo[] chain, Dictionary<string, string> nested)
    {
        foreach (var p in type.GetProperties(BindingFlags.Public | BindingFlags.Instance).Where(p => p.CanWrite))
        {
            var value = p.GetValue(defaults);
            var t = Nullable.GetUnderlyingType(p.PropertyType) ?? p.PropertyType;
            if (t.IsClass && t != typeof(string))
            {
                if (value is not null) Collect(t, value, nested.GetValueOrDefault(p.Name, Kebab(p.Name) + "-"), chain.Append(p).ToArray(), nested);
                continue;
            }
            string name = "--" + prefix + Kebab(p.Name);
            string shown = value switch { double d => d.ToString("G", CultureInfo.InvariantCulture), null => "none", _ => value.ToString()! };
            string kind = t.IsEnum ? string.Join("|", Enum.GetNames(t)) : t == typeof(bool) ? "flag" : t.Name.ToLowerInvariant();
            string about = DocSummary(p) is string doc ? doc + "; " : "";
            var option = new Option<string>(name) { Description = $"{about}{kind}, default {shown}", HelpName = "value" };
            if (t == typeof(bool)) option.Arity = ArgumentArity.ZeroOrOne; // --flag alone means true, as the commands' own flags
            options.Add((name, chain.Append(p).ToArray(), option));
        }
    }

    /// <summary>The XML doc summary of a setting (the library ships Dmd.xml beside Dmd.dll), flattened to one line.</summary>
    static string? DocSummary(PropertyInfo p)
    {
        docs ??= LoadDocs();
        return docs.TryGetValue(Id(p), out var s) ? s : null;
    }

    /// <summary>The documentation id of a property, as the compiler writes it into Dmd.xml.</summary>
    static string Id(PropertyInfo p) => $"P:{p.DeclaringType!.FullName}.{p.Name}";

    /// <summary>Where a flattened summary referred to a member: its id between two control characters.</summary>
    static readonly Regex CrefMark = new("\u0001([^\u0002]*)\u0002");

    /// <summary>A summary's text with its references kept: a cref as a mark (resolved to an option name later), a langword or paramref as its word.</summary>
    static string Flatten(XElement e) => string.Concat(e.Nodes().Select(n => n switch
    {
        XText t => t.Value,
        XElement r when r.Attribute("cref") is { } c => $"\u0001{c.Value}\u0002",
        XElement r when (r.Attribute("langword") ?? r.Attribute("name")) is { } w => w.Value,
        XElement r => Flatten(r),
        _ => "",
    }));

    static Dictionary<string, string>? docs;

    static Dictionary<string, string> LoadDocs()
    {
        var path = Path.Combine(AppContext.BaseDirectory, "Dmd.xml");
        if (!File.Exists(path)) return new();
        try
        {
            return XDocument.Load(path).Descendants("member")
                .Where(m => m.Attribute("name") is not null && m.Element("summary") is not null)
                .ToDictionary(m => m.Attribute("name")!.Value,
                              m => string.Join(" ", Flatten(m.Element("summary")!).Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries)).TrimEnd('.'));
        }
        catch (System.Xml.XmlException) { return new(); }
    }

    static string Kebab(string s) => Settings.Kebab(s);

    /// <summary>Defaults (or a JSON config file's values) overridden by the options given on the command line.</summary>
    public T Bind(ParseResult result, T? start = null)
    {
        var cfg = Clone(start ?? new T());
        foreach (var (name, chain, option) in options)
        {
            var given = result.GetResult(option);
            if (given is null) continue;
            var text = given.Tokens.Count == 0 ? "true" : given.Tokens[0].Value;
            object target = cfg;
            var parents = new List<(object Obj, PropertyInfo Prop)>();
            for (int i = 0; i < chain.Length - 1; i++)
            {
                var child = Clone(chain[i].GetValue(target)!);
                chain[i].SetValue(target, child);
                target = child;
            }
            var prop = chain[^1];
            prop.SetValue(target, Parse(name, text, Nullable.GetUnderlyingType(prop.PropertyType) ?? prop.PropertyType));
        }
        return cfg;
    }

    static object Parse(string name, string text, Type t)
    {
        try
        {
            if (t.IsEnum) return Enum.Parse(t, text.Replace("-", ""), ignoreCase: true);
            if (t == typeof(bool)) return text is "1" or "true" or "yes" or "on" ? true : text is "0" or "false" or "no" or "off" ? false : throw new FormatException();
            if (t == typeof(string)) return text;
            // numbers as written in code and JSON: no thousands separators (so "1,5" is an error, not 15), no NaN or infinity
            if (t == typeof(double) && double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out var d) && double.IsFinite(d)) return d;
            if (t == typeof(int) && int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var i)) return i;
            if (t == typeof(long) && long.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var l)) return l;
            if (t == typeof(double) || t == typeof(int) || t == typeof(long)) throw new FormatException();
            return Convert.ChangeType(text, t, CultureInfo.InvariantCulture);
        }
        catch (Exception e) when (e is FormatException or InvalidCastException or OverflowException or ArgumentException)
        {
            var hint = t.IsEnum ? string.Join(", ", Enum.GetNames(t)) : t == typeof(double) ? "a finite number such as 0.5 or 1e-4" : t == typeof(int) || t == typeof(long) ? "a whole number" : t.Name;
            throw new DmdInputException($"{name}: '{text}' is not a valid value (expected {hint})");
        }
    }

    static TC Clone<TC>(TC o) where TC : notnull =>
        (TC)JsonSerializer.Deserialize(JsonSerializer.Serialize(o, o.GetType(), Checkpoint.Json), o.GetType(), Checkpoint.Json)!;
}
