// imagebuild turns a prepared root filesystem folder into a one-layer container image and writes
// it as a docker-archive tar (what `docker save` writes; `docker load`, `ctr images import` and
// `skopeo copy docker-archive:...` read it). It needs no daemon and no registry: `make image`
// (scripts/image.sh) uses it to build offline the image the repository's Dockerfile describes.
//
// The layer is reproducible: entries in lexical order, owned by 0:0, with one fixed timestamp
// (-created, default SOURCE_DATE_EPOCH or 1970-01-01), and the modes of the folder's files. Only
// folders, regular files and symbolic links are taken; anything else is an error.
//
// Usage:
//
//	imagebuild -rootfs DIR -tag NAME:TAG -out FILE.tar -entrypoint /bin -cmd ARG \
//	    [-user UID:GID] [-workdir DIR] [-env K=V]... [-label K=V]...
//	imagebuild -version
package main

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

const ggcr = "github.com/google/go-containerregistry"

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "imagebuild: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		rootfs     = flag.String("rootfs", "", "folder whose contents become the image's file system")
		tag        = flag.String("tag", "", "repository tag recorded in the archive, e.g. edge-hierarchy-operator:dev")
		out        = flag.String("out", "", "docker-archive tar to write (replaced atomically)")
		entrypoint = flag.String("entrypoint", "", "absolute path of the entrypoint inside the image")
		user       = flag.String("user", "", "user the container runs as, UID:GID")
		workdir    = flag.String("workdir", "/", "working directory")
		created    = flag.String("created", "", "RFC 3339 time for the config and every layer entry (default SOURCE_DATE_EPOCH, else 1970-01-01)")
		version    = flag.Bool("version", false, "print the go-containerregistry version this was built with")
		cmd, env   list
		labels     list
	)
	flag.Var(&cmd, "cmd", "default argument (repeat for several)")
	flag.Var(&env, "env", "environment variable K=V (repeat)")
	flag.Var(&labels, "label", "label K=V (repeat)")
	flag.Parse()

	if *version {
		fmt.Printf("imagebuild %s %s\n", ggcr, moduleVersion(ggcr))
		return nil
	}
	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", flag.Args())
	}
	for flagName, v := range map[string]string{"-rootfs": *rootfs, "-tag": *tag, "-out": *out, "-entrypoint": *entrypoint} {
		if v == "" {
			return fmt.Errorf("%s is required", flagName)
		}
	}
	ref, err := name.NewTag(*tag)
	if err != nil || !strings.Contains((*tag)[strings.LastIndex(*tag, "/")+1:], ":") {
		return fmt.Errorf("-tag %q is not NAME:TAG (%v)", *tag, err)
	}
	when, err := timestamp(*created)
	if err != nil {
		return err
	}
	if !strings.HasPrefix(*entrypoint, "/") {
		return fmt.Errorf("-entrypoint %q must be an absolute path inside the image", *entrypoint)
	}
	arch, variant, err := architecture(filepath.Join(*rootfs, *entrypoint))
	if err != nil {
		return err
	}
	for _, kv := range append(append(list{}, env...), labels...) {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return fmt.Errorf("%q is not K=V", kv)
		}
	}
	labelMap := map[string]string{}
	for _, kv := range labels {
		k, v, _ := strings.Cut(kv, "=")
		labelMap[k] = v
	}

	layerTar, err := tarFolder(*rootfs, when)
	if err != nil {
		return err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithCompressedCaching)
	if err != nil {
		return fmt.Errorf("layer: %w", err)
	}
	img, err := mutate.Append(empty.Image, mutate.Addendum{
		Layer: layer,
		History: v1.History{
			Created:   v1.Time{Time: when},
			CreatedBy: "imagebuild -rootfs (scripts/image.sh)",
			Comment:   "root file system assembled by scripts/image-rootfs.sh",
		},
	})
	if err != nil {
		return fmt.Errorf("append layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.OS = "linux"
	cf.Architecture = arch
	cf.Variant = variant
	cf.Created = v1.Time{Time: when}
	cf.Config = v1.Config{
		User:       *user,
		Entrypoint: []string{*entrypoint},
		Cmd:        cmd,
		Env:        env,
		WorkingDir: *workdir,
		Labels:     labelMap,
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}

	tmp := *out + ".tmp"
	if err := tarball.WriteToFile(tmp, ref, img); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write %s: %w", *out, err)
	}
	if err := os.Rename(tmp, *out); err != nil {
		return err
	}
	id, err := img.ConfigName()
	if err != nil {
		return err
	}
	fmt.Printf("%s %s linux/%s %s\n", *out, ref.String(), arch, id)
	return nil
}

// moduleVersion reads a dependency's version from the build information.
func moduleVersion(path string) string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	for _, dep := range info.Deps {
		if dep.Path == path {
			return dep.Version
		}
	}
	return "unknown"
}

func timestamp(flagValue string) (time.Time, error) {
	if flagValue != "" {
		t, err := time.Parse(time.RFC3339, flagValue)
		if err != nil {
			return time.Time{}, fmt.Errorf("-created %q: %w", flagValue, err)
		}
		return t.UTC(), nil
	}
	if epoch := os.Getenv("SOURCE_DATE_EPOCH"); epoch != "" {
		secs, err := strconv.ParseInt(epoch, 10, 64)
		if err != nil {
			return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH %q is not a number of seconds", epoch)
		}
		return time.Unix(secs, 0).UTC(), nil
	}
	return time.Unix(0, 0).UTC(), nil
}

// architecture reads the OCI architecture (and variant) from the entrypoint's ELF header, so the
// config always matches the binary, whatever machine assembled the image.
func architecture(path string) (string, string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return "", "", fmt.Errorf("entrypoint %s: %w (it must be an ELF executable in -rootfs)", path, err)
	}
	defer f.Close()
	switch f.Machine {
	case elf.EM_X86_64:
		return "amd64", "", nil
	case elf.EM_AARCH64:
		return "arm64", "v8", nil
	case elf.EM_386:
		return "386", "", nil
	case elf.EM_PPC64:
		return "ppc64le", "", nil
	case elf.EM_S390:
		return "s390x", "", nil
	case elf.EM_RISCV:
		return "riscv64", "", nil
	}
	return "", "", fmt.Errorf("entrypoint %s is for %v, which this tool does not map to an OCI architecture", path, f.Machine)
}

// tarFolder writes the folder's contents as an uncompressed layer tar.
func tarFolder(root string, when time.Time) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil || rel == "." {
			return err
		}
		info, err := os.Lstat(path)
		if err != nil {
			return err
		}
		hdr := &tar.Header{
			Name:    filepath.ToSlash(rel),
			Mode:    tarMode(info.Mode()),
			ModTime: when,
		}
		switch {
		case info.Mode().IsDir():
			hdr.Typeflag = tar.TypeDir
			hdr.Name += "/"
		case info.Mode().IsRegular():
			hdr.Typeflag = tar.TypeReg
			hdr.Size = info.Size()
		case info.Mode()&fs.ModeSymlink != 0:
			hdr.Typeflag = tar.TypeSymlink
			if hdr.Linkname, err = os.Readlink(path); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%s is neither a folder, a regular file nor a symbolic link", path)
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if hdr.Typeflag == tar.TypeReg {
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			defer f.Close()
			if n, err := io.Copy(tw, f); err != nil || n != hdr.Size {
				return errors.Join(fmt.Errorf("%s changed while being read", path), err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("rootfs %s: %w", root, err)
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// tarMode converts Go's file mode bits to the tar header's (permissions plus setuid, setgid and
// sticky, which /tmp needs).
func tarMode(m fs.FileMode) int64 {
	mode := int64(m.Perm())
	if m&fs.ModeSetuid != 0 {
		mode |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		mode |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		mode |= 0o1000
	}
	return mode
}
