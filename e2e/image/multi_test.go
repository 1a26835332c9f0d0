package image

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/validate"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// TestWriteMultiIsAnIndexOfPlatforms checks the layout a multi-platform
// image must have for containerd and kind: index.json names an image index
// (with the image's name), which names one manifest per platform, each with
// its own config, architecture and files.
func TestWriteMultiIsAnIndexOfPlatforms(t *testing.T) {
	labels := map[string]string{ocispec.AnnotationVersion: "v1.2.3"}
	specs := []Spec{
		{Architecture: "amd64", Files: []File{{Path: "/bin/app", Data: []byte("x86-64 code"), Mode: 0o755}}, Labels: labels},
		{Architecture: "arm64", Files: []File{{Path: "/bin/app", Data: []byte("aarch64 code"), Mode: 0o755}}, Labels: labels},
	}
	path := filepath.Join(t.TempDir(), "multi.tar")
	dgst, err := WriteMultiFile(path, "stickyvol.local/multi:v1", specs)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := layout.ImageIndexFromPath(untar(t, raw))
	if err != nil {
		t.Fatalf("not an OCI layout: %v", err)
	}
	if err := validate.Index(idx, validate.Fast); err != nil {
		t.Fatalf("invalid index: %v", err)
	}

	l, err := ReadLayout(path)
	if err != nil {
		t.Fatal(err)
	}
	if l.Top.MediaType != ocispec.MediaTypeImageIndex || l.Top.Digest != dgst {
		t.Errorf("index.json names %s %s, want the image index %s", l.Top.MediaType, l.Top.Digest, dgst)
	}
	if got := l.Top.Annotations[AnnotationContainerdName]; got != "stickyvol.local/multi:v1" {
		t.Errorf("name annotation %q", got)
	}
	manifests, err := l.Manifests()
	if err != nil {
		t.Fatal(err)
	}
	if len(manifests) != 2 {
		t.Fatalf("%d manifests, want 2", len(manifests))
	}
	for i, m := range manifests {
		arch := specs[i].Architecture
		if m.Platform == nil || m.Platform.OS != "linux" || m.Platform.Architecture != arch {
			t.Errorf("manifest %d platform %+v, want linux/%s", i, m.Platform, arch)
		}
		config, err := l.Config(m)
		if err != nil {
			t.Fatal(err)
		}
		if config.Architecture != arch || config.Config.Labels[ocispec.AnnotationVersion] != "v1.2.3" {
			t.Errorf("%s config: arch %s, labels %v", arch, config.Architecture, config.Config.Labels)
		}
		file, err := l.File(m, "/bin/app")
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(file, specs[i].Files[0].Data) {
			t.Errorf("%s image holds %q", arch, file)
		}
	}

	if _, err := WriteMulti(&bytes.Buffer{}, "stickyvol.local/multi:v1", []Spec{specs[0], specs[0]}); err == nil {
		t.Error("WriteMulti accepted one platform twice")
	}
}
