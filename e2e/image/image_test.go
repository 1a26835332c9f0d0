package image

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"
	"github.com/opencontainers/go-digest"
)

func testSpec(t *testing.T) Spec {
	t.Helper()
	src := filepath.Join(t.TempDir(), "tool")
	if err := os.WriteFile(src, []byte("#!/bin/sh\necho tool\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return Spec{
		Ref: "stickyvol.local/test:v1",
		Files: []File{
			{Path: "/usr/local/bin/tool", Source: src, Mode: 0o755},
			{Path: "/etc/passwd", Data: []byte("root:x:0:0:root:/root:/bin/sh\n"), Mode: 0o644},
			{Path: "/bin/su", Data: []byte("su"), Mode: 0o4755},
		},
		Dirs:       []Dir{{Path: "/tmp", Mode: 0o1777}},
		Symlinks:   []Symlink{{Path: "/bin/sh", Target: "busybox"}},
		Entrypoint: []string{"/usr/local/bin/tool"},
		Cmd:        []string{"--flag", "x"},
		Env:        []string{"A=b"},
		User:       "65534:65534",
		WorkingDir: "/tmp",
	}
}

// untar extracts an OCI layout tarball into a directory and returns it.
func untar(t *testing.T, tarball []byte) string {
	t.Helper()
	dir := t.TempDir()
	tr := tar.NewReader(bytes.NewReader(tarball))
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return dir
		}
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(dir, filepath.FromSlash(hdr.Name))
		if hdr.Typeflag == tar.TypeDir {
			if err := os.MkdirAll(dst, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(hdr.Name, "blobs/sha256/") {
			if got := digest.FromBytes(data).Encoded(); got != filepath.Base(hdr.Name) {
				t.Errorf("blob %s holds content with digest %s", hdr.Name, got)
			}
		}
		if err := os.WriteFile(dst, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// readImage reads the single image of a layout with go-containerregistry,
// an implementation independent of the writer, and validates it: digests and
// sizes of manifest, config and layer, and the layer's diff ID.
func readImage(t *testing.T, dir string) (v1.Descriptor, v1.Image) {
	t.Helper()
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatalf("not an OCI layout: %v", err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 {
		t.Fatalf("index has %d manifests, want 1", len(im.Manifests))
	}
	img, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	// validate.Image reads every layer through gzip; this layer is an
	// uncompressed tar (a valid OCI media type), so the full check runs in
	// Fast mode and the layer is checked here.
	if err := validate.Image(img, validate.Fast); err != nil {
		t.Fatalf("invalid image: %v", err)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if m.MediaType != types.OCIManifestSchema1 || len(m.Layers) != 1 || m.Layers[0].MediaType != types.OCIUncompressedLayer {
		t.Fatalf("manifest %s with layers %+v, want one uncompressed OCI layer", m.MediaType, m.Layers)
	}
	blob, err := os.ReadFile(filepath.Join(dir, "blobs", "sha256", m.Layers[0].Digest.Hex))
	if err != nil {
		t.Fatalf("layer blob missing: %v", err)
	}
	if int64(len(blob)) != m.Layers[0].Size {
		t.Errorf("layer is %d bytes, manifest says %d", len(blob), m.Layers[0].Size)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if len(cf.RootFS.DiffIDs) != 1 || cf.RootFS.DiffIDs[0].String() != digest.FromBytes(blob).String() {
		t.Errorf("config diff IDs %v, want the uncompressed layer's digest %s", cf.RootFS.DiffIDs, digest.FromBytes(blob))
	}
	return im.Manifests[0], img
}

func TestWriteIsAValidLayoutWithNameAndConfig(t *testing.T) {
	spec := testSpec(t)
	var buf bytes.Buffer
	dgst, err := Write(&buf, spec)
	if err != nil {
		t.Fatal(err)
	}
	desc, img := readImage(t, untar(t, buf.Bytes()))

	if desc.Digest.String() != dgst.String() {
		t.Errorf("Write returned %s, index names manifest %s", dgst, desc.Digest)
	}
	if got := desc.Annotations["io.containerd.image.name"]; got != spec.Ref {
		t.Errorf("containerd name annotation = %q, want %q", got, spec.Ref)
	}
	if got := desc.Annotations["org.opencontainers.image.ref.name"]; got != "v1" {
		t.Errorf("OCI ref name annotation = %q, want the tag v1", got)
	}
	if desc.Platform == nil || desc.Platform.OS != "linux" || desc.Platform.Architecture != runtime.GOARCH {
		t.Errorf("platform = %+v, want linux/%s", desc.Platform, runtime.GOARCH)
	}

	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	if !slices.Equal(c.Entrypoint, spec.Entrypoint) || !slices.Equal(c.Cmd, spec.Cmd) {
		t.Errorf("entrypoint/cmd = %q %q, want %q %q", c.Entrypoint, c.Cmd, spec.Entrypoint, spec.Cmd)
	}
	if want := []string{DefaultPathEnv, "A=b"}; !slices.Equal(c.Env, want) {
		t.Errorf("env = %q, want %q", c.Env, want)
	}
	if c.User != spec.User || c.WorkingDir != spec.WorkingDir {
		t.Errorf("user/workdir = %q %q, want %q %q", c.User, c.WorkingDir, spec.User, spec.WorkingDir)
	}
	if cf.OS != "linux" || cf.Architecture != runtime.GOARCH {
		t.Errorf("config platform = %s/%s", cf.OS, cf.Architecture)
	}
}

type member struct {
	hdr  tar.Header
	data string
}

func layerMembers(t *testing.T, img v1.Image) ([]string, map[string]member) {
	t.Helper()
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers = %d, %v; want exactly 1", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var order []string
	members := map[string]member{}
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return order, members
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		order = append(order, hdr.Name)
		members[hdr.Name] = member{hdr: *hdr, data: string(data)}
	}
}

func TestLayerHasFilesModesAndParents(t *testing.T) {
	var buf bytes.Buffer
	if _, err := Write(&buf, testSpec(t)); err != nil {
		t.Fatal(err)
	}
	_, img := readImage(t, untar(t, buf.Bytes()))
	order, members := layerMembers(t, img)

	want := []struct {
		name     string
		typ      byte
		mode     int64
		data     string
		linkname string
	}{
		{"bin/", tar.TypeDir, 0o755, "", ""},
		{"bin/sh", tar.TypeSymlink, 0o777, "", "busybox"},
		{"bin/su", tar.TypeReg, 0o4755, "su", ""},
		{"etc/", tar.TypeDir, 0o755, "", ""},
		{"etc/passwd", tar.TypeReg, 0o644, "root:x:0:0:root:/root:/bin/sh\n", ""},
		{"tmp/", tar.TypeDir, 0o1777, "", ""},
		{"usr/", tar.TypeDir, 0o755, "", ""},
		{"usr/local/", tar.TypeDir, 0o755, "", ""},
		{"usr/local/bin/", tar.TypeDir, 0o755, "", ""},
		// The source file is 0o600 on the host: the Spec's mode wins.
		{"usr/local/bin/tool", tar.TypeReg, 0o755, "#!/bin/sh\necho tool\n", ""},
	}
	var wantOrder []string
	for _, w := range want {
		wantOrder = append(wantOrder, w.name)
		m, ok := members[w.name]
		if !ok {
			t.Errorf("layer lacks %s", w.name)
			continue
		}
		h := m.hdr
		if h.Typeflag != w.typ || h.Mode != w.mode || m.data != w.data || h.Linkname != w.linkname {
			t.Errorf("%s: type %c mode %#o link %q data %q; want type %c mode %#o link %q data %q",
				w.name, h.Typeflag, h.Mode, h.Linkname, m.data, w.typ, w.mode, w.linkname, w.data)
		}
		if h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(epoch) {
			t.Errorf("%s: owner %d:%d mtime %v; want 0:0 at the epoch", w.name, h.Uid, h.Gid, h.ModTime)
		}
	}
	if !slices.Equal(order, wantOrder) {
		t.Errorf("layer order = %q, want %q (parents before children)", order, wantOrder)
	}
}

func TestWriteIsDeterministic(t *testing.T) {
	spec := testSpec(t)
	var a, b bytes.Buffer
	da, err := Write(&a, spec)
	if err != nil {
		t.Fatal(err)
	}
	// Entry order in the Spec does not matter either.
	slices.Reverse(spec.Files)
	db, err := Write(&b, spec)
	if err != nil {
		t.Fatal(err)
	}
	if da != db || !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Errorf("two writes of the same spec differ: %s vs %s", da, db)
	}
}

func TestWriteFileReplacesAtomically(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "images", "test.tar")
	spec := testSpec(t)
	if _, err := WriteFile(out, spec); err != nil {
		t.Fatal(err)
	}
	spec.Cmd = []string{"other"}
	dgst, err := WriteFile(out, spec)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(filepath.Dir(out))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != "test.tar" {
		t.Errorf("images dir holds %v, want only test.tar (no temp files)", entries)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	desc, _ := readImage(t, untar(t, data))
	if desc.Digest.String() != dgst.String() {
		t.Errorf("file holds manifest %s, want the second write's %s", desc.Digest, dgst)
	}
}

func TestRefs(t *testing.T) {
	for _, tc := range []struct {
		ref string
		ok  bool
	}{
		{"stickyvol.local/stickyvol:dev", true},
		{"registry.k8s.io/pause:3.10", true},
		{"localhost:5000/a/b:1", true},
		{"localhost/busybox:1", true},
		{"docker.io/library/busybox:1.36", true},
		{"busybox:1", false},         // CRI would look for docker.io/library/busybox:1
		{"library/busybox:1", false}, // no registry host
		{"stickyvol.local/stickyvol", false},
		{"stickyvol.local/Bad:1", false},
		{"", false},
	} {
		_, err := Write(io.Discard, Spec{Ref: tc.ref})
		if (err == nil) != tc.ok {
			t.Errorf("ref %q: err = %v, want ok=%v", tc.ref, err, tc.ok)
		}
	}
}

func TestBadEntries(t *testing.T) {
	dir := t.TempDir()
	for name, spec := range map[string]Spec{
		"relative path":     {Files: []File{{Path: "bin/x", Mode: 0o755}}},
		"root path":         {Dirs: []Dir{{Path: "/", Mode: 0o755}}},
		"twice":             {Files: []File{{Path: "/x"}}, Symlinks: []Symlink{{Path: "/x/", Target: "y"}}},
		"inside a file":     {Files: []File{{Path: "/x"}, {Path: "/x/y"}}},
		"inside a symlink":  {Symlinks: []Symlink{{Path: "/bin", Target: "usr/bin"}}, Files: []File{{Path: "/bin/sh"}}},
		"mode beyond 7777":  {Files: []File{{Path: "/x", Mode: 0o10755}}},
		"source is a dir":   {Files: []File{{Path: "/x", Source: dir}}},
		"source and data":   {Files: []File{{Path: "/x", Source: dir, Data: []byte("x")}}},
		"symlink no target": {Symlinks: []Symlink{{Path: "/x"}}},
	} {
		spec.Ref = "stickyvol.local/bad:1"
		if _, err := Write(io.Discard, spec); !errors.Is(err, errBadEntry) {
			t.Errorf("%s: err = %v, want a bad entry error", name, err)
		}
	}
	missing := Spec{Ref: "stickyvol.local/bad:1", Files: []File{{Path: "/x", Source: filepath.Join(dir, "missing")}}}
	if _, err := Write(io.Discard, missing); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing source: err = %v, want not exist", err)
	}
}
