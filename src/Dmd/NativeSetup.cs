using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Dmd;

/// <summary>
/// Process-wide settings of libtorch's native libraries, applied before the first network runs.
/// <para>
/// oneDNN (libtorch's CPU convolution library) is limited to AVX2 kernels: with its AVX-512 kernels, on this project's
/// 2-core Debian VM (a CPU with AVX-512 and VNNI/BF16) a forward pass of the small U-Nets returned all-NaN outputs for
/// finite weights and inputs in about 1.6 % of calls (0 to 7 % per process; 123 of 7200 calls over 12 processes), with
/// no garbage collection running and one thread, so training steps went NaN at random; with AVX2 kernels 0 of 3600.
/// Set <c>ONEDNN_MAX_CPU_ISA</c> yourself (e.g. <c>ALL</c>) to choose otherwise; an existing value is kept.
/// </para>
/// </summary>
public static class NativeSetup
{
    [DllImport("libc", EntryPoint = "setenv")]
    static extern int SetEnv(string name, string value, int overwrite);

    /// <summary>Applies the settings (idempotent; the library does it when it loads).</summary>
    public static void Apply()
    {
        if (!OperatingSystem.IsLinux() || Environment.GetEnvironmentVariable("ONEDNN_MAX_CPU_ISA") is not null) return;
        try { SetEnv("ONEDNN_MAX_CPU_ISA", "AVX2", 0); } // the native environment: oneDNN reads it with getenv
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { }
    }

#pragma warning disable CA2255 // must run before any TorchSharp call creates a oneDNN kernel
    [ModuleInitializer]
    internal static void OnLoad() => Apply();
#pragma warning restore CA2255
}
