// MSBuild inline task (see Dmd.targets beside this file): marks one version requirement of an ELF64
// little-endian shared object as weak, so the dynamic loader tolerates its absence.
//
// Layout read here (System V gABI, glibc's symbol versioning):
//   ELF header: e_shoff @0x28 (u64), e_shentsize @0x3A, e_shnum @0x3C (u16).
//   Section header (64 bytes): sh_type @4 (u32), sh_offset @24 (u64), sh_link @40 (u32), sh_info @44 (u32).
//   SHT_GNU_verneed = 0x6ffffffe; sh_info = number of Elf64_Verneed entries, sh_link = string table.
//   Elf64_Verneed: vn_version u16, vn_cnt u16, vn_file u32, vn_aux u32, vn_next u32.
//   Elf64_Vernaux: vna_hash u32, vna_flags u16, vna_other u16, vna_name u32, vna_next u32.
//   VER_FLG_WEAK = 0x2.
using System;
using System.IO;
using System.Text;
using Microsoft.Build.Framework;
using Microsoft.Build.Utilities;

public class MarkElfVersionNeedWeak : Task
{
    [Required] public ITaskItem[] Files { get; set; } = Array.Empty<ITaskItem>();
    [Required] public string VersionName { get; set; } = "";

    public override bool Execute()
    {
        foreach (var item in Files)
        {
            string path = item.ItemSpec;
            try
            {
                int n = Patch(path, VersionName);
                if (n > 0) Log.LogMessage(MessageImportance.Normal, $"{path}: marked {VersionName} weak");
            }
            catch (Exception e)
            {
                Log.LogWarning($"could not patch {path}: {e.Message}");
            }
        }
        return true;
    }

    static int Patch(string path, string versionName)
    {
        byte[] b = File.ReadAllBytes(path);
        if (b.Length < 64 || b[0] != 0x7f || b[1] != (byte)'E' || b[2] != (byte)'L' || b[3] != (byte)'F' || b[4] != 2 || b[5] != 1)
            throw new InvalidDataException("not a little-endian ELF64 file");
        long shoff = (long)BitConverter.ToUInt64(b, 0x28);
        int shentsize = BitConverter.ToUInt16(b, 0x3A), shnum = BitConverter.ToUInt16(b, 0x3C);
        int changed = 0;
        for (int i = 0; i < shnum; i++)
        {
            long sh = shoff + (long)i * shentsize;
            if (BitConverter.ToUInt32(b, (int)sh + 4) != 0x6ffffffe) continue;
            long off = (long)BitConverter.ToUInt64(b, (int)sh + 24);
            uint link = BitConverter.ToUInt32(b, (int)sh + 40), count = BitConverter.ToUInt32(b, (int)sh + 44);
            long strtab = (long)BitConverter.ToUInt64(b, (int)(shoff + link * shentsize) + 24);
            long vn = off;
            for (uint k = 0; k < count; k++)
            {
                int cnt = BitConverter.ToUInt16(b, (int)vn + 2);
                long aux = vn + BitConverter.ToUInt32(b, (int)vn + 8);
                for (int j = 0; j < cnt; j++)
                {
                    long name = strtab + BitConverter.ToUInt32(b, (int)aux + 8);
                    int end = Array.IndexOf(b, (byte)0, (int)name);
                    string s = Encoding.ASCII.GetString(b, (int)name, end - (int)name);
                    ushort flags = BitConverter.ToUInt16(b, (int)aux + 4);
                    if (s == versionName && (flags & 2) == 0)
                    {
                        flags |= 2;
                        b[aux + 4] = (byte)(flags & 0xff);
                        b[aux + 5] = (byte)(flags >> 8);
                        changed++;
                    }
                    aux += BitConverter.ToUInt32(b, (int)aux + 12);
                }
                vn += BitConverter.ToUInt32(b, (int)vn + 12);
            }
        }
        if (changed > 0)
        {
            // write a new file and move it over, so a hard link into the NuGet cache is never modified
            string tmp = path + ".patching";
            File.WriteAllBytes(tmp, b);
            File.Delete(path);
            File.Move(tmp, path);
        }
        return changed;
    }
}
