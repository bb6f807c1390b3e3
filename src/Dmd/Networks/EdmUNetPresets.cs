namespace Dmd.Networks;

/// <summary>
/// The U-Net configurations of EDM's published checkpoints (NVlabs/edm <c>train.py</c>: <c>--arch</c>
/// ddpmpp / ncsnpp / adm, augment_dim 9 where trained with the augment pipe, dropout 0.13 for CIFAR-10
/// and 0.10 for ImageNet-64), and small configurations for CPU-sized image teachers.
/// Wrap the result in <see cref="Diffusion.EdmPrecond"/> to get EDM's state-dict names (<c>model.*</c>).
/// </summary>
internal static class EdmUNetPresets
{
    /// <summary>CIFAR-10 32x32, class-conditional DDPM++ (<c>edm-cifar10-32x32-cond-vp</c>): 55.7 M parameters.</summary>
    public static SongUNet Cifar10DdpmppCond() => new(
        imgResolution: 32, inChannels: 3, outChannels: 3, labelDim: 10, augmentDim: 9,
        modelChannels: 128, channelMult: new[] { 2, 2, 2 }, channelMultEmb: 4, numBlocks: 4,
        attnResolutions: new[] { 16 }, dropout: 0.13,
        embeddingType: NoiseEmbeddingType.Positional, channelMultNoise: 1,
        encoderType: SongEncoderType.Standard, decoderType: SongDecoderType.Standard,
        resampleFilter: new[] { 1.0, 1.0 });

    /// <summary>CIFAR-10 32x32, unconditional NCSN++ (<c>edm-cifar10-32x32-uncond-ve</c>): 56.4 M parameters.</summary>
    public static SongUNet Cifar10NcsnppUncond() => new(
        imgResolution: 32, inChannels: 3, outChannels: 3, labelDim: 0, augmentDim: 9,
        modelChannels: 128, channelMult: new[] { 2, 2, 2 }, channelMultEmb: 4, numBlocks: 4,
        attnResolutions: new[] { 16 }, dropout: 0.13,
        embeddingType: NoiseEmbeddingType.Fourier, channelMultNoise: 2,
        encoderType: SongEncoderType.Residual, decoderType: SongDecoderType.Standard,
        resampleFilter: new[] { 1.0, 3.0, 3.0, 1.0 });

    /// <summary>ImageNet 64x64, class-conditional ADM (<c>edm-imagenet-64x64-cond-adm</c>): 295.9 M parameters.</summary>
    public static DhariwalUNet Imagenet64AdmCond() => new(
        imgResolution: 64, inChannels: 3, outChannels: 3, labelDim: 1000, augmentDim: 0,
        modelChannels: 192, channelMult: new[] { 1, 2, 3, 4 }, channelMultEmb: 4, numBlocks: 3,
        attnResolutions: new[] { 32, 16, 8 }, dropout: 0.10);

    /// <summary>
    /// A small DDPM++ for CPU training, e.g. 32x32 greyscale Fashion-MNIST with 10 classes
    /// (the defaults): same code and block structure as <see cref="Cifar10DdpmppCond"/>, fewer and
    /// narrower layers.
    /// </summary>
    public static SongUNet SmallDdpmpp(int imgResolution = 32, int channels = 1, int labelDim = 10, int modelChannels = 32,
        int[]? channelMult = null, int numBlocks = 2, int[]? attnResolutions = null, double dropout = 0.10) => new(
        imgResolution: imgResolution, inChannels: channels, outChannels: channels, labelDim: labelDim, augmentDim: 0,
        modelChannels: modelChannels, channelMult: channelMult ?? new[] { 1, 2, 2 }, channelMultEmb: 4, numBlocks: numBlocks,
        attnResolutions: attnResolutions ?? new[] { 8 }, dropout: dropout,
        embeddingType: NoiseEmbeddingType.Positional, channelMultNoise: 1,
        encoderType: SongEncoderType.Standard, decoderType: SongDecoderType.Standard);
}
