package cluster

import (
	"context"
	"crypto/sha256"
	"debug/elf"
	_ "embed"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/stickyvol/stickyvol/e2e/image"
)

// Images every node gets, made on this machine.
const (
	// PauseImage is the pods' sandbox image; the nodes' containerd config
	// names it as sandbox_image. It is a tiny static Go program
	// (internal/pause) tagged with the upstream name, so nothing is pulled.
	PauseImage = "registry.k8s.io/pause:3.10"
	// BusyboxImage holds Debian's static busybox as /bin/busybox with a
	// symlink per applet in /bin (sh, nc, nslookup, ...), for test pods.
	// Pods name it with imagePullPolicy IfNotPresent (or Never).
	// Debian's static busybox wget crashes: use nc for HTTP checks.
	BusyboxImage = "stickyvol.local/busybox:1"
)

// hostBusybox is where Debian's busybox-static puts its binary.
const hostBusybox = "/bin/busybox"

// baseImageRecipe is part of every base image's cache key: change it when
// the way an image is put together changes, so cached tarballs are rebuilt.
const baseImageRecipe = "1"

//go:embed internal/pause/main.go
var pauseSource []byte

// EnsureBaseImages returns the OCI tarballs of PauseImage and BusyboxImage
// under cacheDir/images, for `ctr -n k8s.io images import`. A tarball's name
// carries a hash of what went into it (the pause source, the host's busybox
// binary), so it is rebuilt when that changes, and otherwise returned at once.
func EnsureBaseImages(ctx context.Context, cacheDir string) ([]string, error) {
	busybox, err := os.ReadFile(hostBusybox)
	if err != nil {
		return nil, fmt.Errorf("busybox image: %w (install busybox-static)", err)
	}
	images := []struct {
		name, key string
		make      func(ctx context.Context, b *builder, path string) error
	}{
		{"pause", cacheKey(pauseSource), makePauseImage},
		{"busybox", cacheKey(busybox), makeBusyboxImage},
	}
	paths := make([]string, len(images))
	var missing []int
	for i, img := range images {
		paths[i] = filepath.Join(cacheDir, "images", img.name+"-"+img.key+".tar")
		if _, err := os.Stat(paths[i]); err != nil {
			missing = append(missing, i)
		}
	}
	if len(missing) == 0 {
		return paths, nil
	}

	unlock, err := lockCache(ctx, cacheDir, io.Discard)
	if err != nil {
		return nil, err
	}
	defer unlock()
	b, err := newBuilder(cacheDir, io.Discard)
	if err != nil {
		return nil, err
	}
	for _, i := range missing {
		if _, err := os.Stat(paths[i]); err == nil {
			continue // made by another process while this one waited
		}
		// Tarballs of older inputs, and temporary files of a killed run.
		removeStale(filepath.Join(cacheDir, "images", images[i].name+"-*.tar*"))
		if err := images[i].make(ctx, b, paths[i]); err != nil {
			return nil, err
		}
	}
	return paths, nil
}

func cacheKey(input []byte) string {
	sum := sha256.Sum256(append([]byte(baseImageRecipe+"\n"), input...))
	return hex.EncodeToString(sum[:6])
}

// makePauseImage builds internal/pause from its embedded source in a helper
// module of its own, so it works wherever the program runs, and packs it.
func makePauseImage(ctx context.Context, b *builder, path string) error {
	dir := filepath.Join(b.cacheDir, "build", "pause")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	files := map[string][]byte{
		"go.mod":  []byte("module stickyvol.local/build/pause\n\ngo 1.22\n"),
		"main.go": pauseSource,
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return err
		}
	}
	bin := filepath.Join(dir, "pause")
	if _, err := b.goCmd(ctx, dir, "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, "."); err != nil {
		return fmt.Errorf("building the pause program: %w", err)
	}
	_, err := image.WriteFile(path, image.Spec{
		Ref:        PauseImage,
		Files:      []image.File{{Path: "/pause", Source: bin, Mode: 0o755}},
		Entrypoint: []string{"/pause"},
		User:       "65535:65535", // as upstream's pause image
	})
	return err
}

// makeBusyboxImage packs the host's static busybox with its applet symlinks.
func makeBusyboxImage(ctx context.Context, _ *builder, path string) error {
	spec, err := BusyboxSpec(ctx, BusyboxImage)
	if err != nil {
		return err
	}
	_, err = image.WriteFile(path, spec)
	return err
}

// BusyboxSpec returns the spec of an image named ref with what BusyboxImage
// holds: the host's static busybox with a symlink per applet in /bin, /tmp,
// /root, and the root and nobody users. Other images that only need a shell
// and its tools start from it.
func BusyboxSpec(ctx context.Context, ref string) (image.Spec, error) {
	if err := checkStatic(hostBusybox); err != nil {
		return image.Spec{}, err
	}
	out, err := exec.CommandContext(ctx, hostBusybox, "--list").Output()
	if err != nil {
		return image.Spec{}, fmt.Errorf("%s --list: %w", hostBusybox, err)
	}
	spec := image.Spec{
		Ref:   ref,
		Files: []image.File{{Path: "/bin/busybox", Source: hostBusybox, Mode: 0o755}},
		Dirs:  []image.Dir{{Path: "/tmp", Mode: 0o1777}, {Path: "/root", Mode: 0o700}},
		Cmd:   []string{"sh"},
	}
	spec.Files = append(spec.Files, busyboxEtc()...)
	for _, applet := range strings.Fields(string(out)) {
		if applet != "busybox" && !strings.Contains(applet, "/") {
			spec.Symlinks = append(spec.Symlinks, image.Symlink{Path: "/bin/" + applet, Target: "busybox"})
		}
	}
	return spec, nil
}

// busyboxEtc gives the image the users and groups tools expect to resolve.
func busyboxEtc() []image.File {
	return []image.File{
		{Path: "/etc/passwd", Mode: 0o644, Data: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")},
		{Path: "/etc/group", Mode: 0o644, Data: []byte("root:x:0:\nnogroup:x:65534:\n")},
	}
}

// checkStatic fails when path is a dynamically linked ELF binary (it asks
// for a program interpreter): Debian's busybox package installs one at the
// same path as busybox-static, and it would not run in an image with no libc.
func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("busybox image: %w", err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("busybox image: %s is dynamically linked; install busybox-static instead of busybox", path)
		}
	}
	return nil
}
