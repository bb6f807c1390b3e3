using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Dmd;

/// <summary>
/// Process-wide workarounds for libtorch's native code, applied before the first network runs (the library does it when
/// it loads; the tool and the tests call <see cref="Apply"/> first thing). Set <c>DMD_NATIVE_WORKAROUNDS=0</c> to skip both.
/// <para>
/// On this project's 2-core Debian VM (x86-64 with AVX-512, VNNI and BF16) libtorch 2.10 read memory it had not written:
/// a forward pass of the small U-Nets returned all-NaN for finite weights and inputs in about 1.6 % of calls (123 of 7200
/// over 12 processes; 0 to 7 % per process), and with that fixed, a backward pass gave NaN gradients in 1.5-10 % of calls
/// (91 of 1800 over 3 processes), with one thread and no garbage collection running. Training steps went NaN at random
/// and the image tests failed. Measured remedies: oneDNN limited to AVX2 kernels removed the NaN forwards (0 of 3600);
/// glibc filling fresh heap blocks with zeros (M_PERTURB 255, what MALLOC_PERTURB_=255 does) removed the NaN gradients
/// (0 of 1800). Both are applied: <c>ONEDNN_MAX_CPU_ISA=AVX2</c> unless the variable is set, and <c>mallopt(M_PERTURB, 255)</c>
/// (it also fills freed blocks with 0xFF, so a read after free shows up as NaN instead of stale numbers).
/// </para>
/// </summary>
internal static class NativeSetup
{
    [DllImport("libc", EntryPoint = "setenv")] static extern int SetEnv(string name, string value, int overwrite);
    [DllImport("libc", EntryPoint = "mallopt")] static extern int MallOpt(int param, int value);
    const int M_PERTURB = -6;
    static bool applied;

    /// <summary>Applies the workarounds once (later calls do nothing).</summary>
    public static void Apply()
    {
        if (applied || !OperatingSystem.IsLinux() || Environment.GetEnvironmentVariable("DMD_NATIVE_WORKAROUNDS") == "0") return;
        applied = true;
        try
        {
            // the native environment (oneDNN reads it with getenv when it first dispatches); a value the user set is kept
            if (Environment.GetEnvironmentVariable("ONEDNN_MAX_CPU_ISA") is null) SetEnv("ONEDNN_MAX_CPU_ISA", "AVX2", 0);
            if (Environment.GetEnvironmentVariable("MALLOC_PERTURB_") is null) MallOpt(M_PERTURB, 255);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { }
    }

#pragma warning disable CA2255 // must run before any TorchSharp call creates a kernel or a tensor
    [ModuleInitializer]
    internal static void OnLoad() => Apply();
#pragma warning restore CA2255
}
