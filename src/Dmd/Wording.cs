namespace Dmd;

/// <summary>Small pieces of the text the library and the tool print, worded alike everywhere.</summary>
internal static class Wording
{
    /// <summary>"1 thread", "2 threads".</summary>
    public static string Threads(int n) => n == 1 ? "1 thread" : $"{n} threads";
}
