//go:build e2e

package framework

import (
	"bytes"
	"debug/elf"
	"slices"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/stickyvol/stickyvol/e2e/image"
)

// TestAgentImageHasEveryPlatform builds the images as `make image` does and
// reads the agent's index back: one manifest per platform, each holding a
// static stickyvol built for that machine, with the OCI labels. The local
// cluster's suites then import this same tarball with ctr.
func TestAgentImageHasEveryPlatform(t *testing.T) {
	repo, err := RepoDir(".")
	if err != nil {
		t.Fatal(err)
	}
	im, err := BuildImages(t.Context(), repo, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	l, err := image.ReadLayout(im.Agent.Tarball)
	if err != nil {
		t.Fatal(err)
	}
	if l.Top.MediaType != ocispec.MediaTypeImageIndex || l.Top.Digest != im.Agent.Digest {
		t.Fatalf("stickyvol.tar names %s %s, want an image index %s", l.Top.MediaType, l.Top.Digest, im.Agent.Digest)
	}
	manifests, err := l.Manifests()
	if err != nil {
		t.Fatal(err)
	}
	machines := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}
	var archs []string
	for _, m := range manifests {
		arch := m.Platform.Architecture
		archs = append(archs, arch)
		bin, err := l.File(m, "/stickyvol")
		if err != nil {
			t.Fatal(err)
		}
		f, err := elf.NewFile(bytes.NewReader(bin))
		if err != nil {
			t.Fatalf("%s: /stickyvol is not an ELF binary: %v", arch, err)
		}
		if f.Machine != machines[arch] {
			t.Errorf("%s image: /stickyvol is built for %v", arch, f.Machine)
		}
		if interp := f.Section(".interp"); interp != nil {
			t.Errorf("%s image: /stickyvol is dynamically linked", arch)
		}
		config, err := l.Config(m)
		if err != nil {
			t.Fatal(err)
		}
		for _, key := range []string{ocispec.AnnotationVersion, ocispec.AnnotationSource, ocispec.AnnotationRevision} {
			if config.Config.Labels[key] == "" {
				t.Errorf("%s image: no label %s in %v", arch, key, config.Config.Labels)
			}
		}
	}
	if !slices.Equal(archs, AgentPlatforms) {
		t.Errorf("platforms %v, want %v", archs, AgentPlatforms)
	}
}
