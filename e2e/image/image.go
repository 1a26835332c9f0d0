// Package image writes single-layer OCI images as tarballs that containerd
// imports under their own name, with no registry and no image builder:
//
//	ctr -n k8s.io images import image.tar
//
// The tarball holds an OCI image layout (oci-layout, index.json, blobs/sha256/...)
// with one uncompressed layer built from a list of files, directories and
// symlinks. Output is deterministic: the same Spec and file contents always
// give the same bytes and the same manifest digest.
package image

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// AnnotationContainerdName is the index.json annotation containerd's importer
// reads first for an image's name. containerd 1.6 (archive.ImportIndex, then
// Client.Import's imageName) takes "io.containerd.image.name" verbatim; only
// without it does it fall back to "org.opencontainers.image.ref.name", which
// `ctr images import` then passes through its ref translator (it prefixes a
// bare tag such as "dev" with "import-<date>"). Setting both, as containerd's
// own exporter does, keeps the full name on import and stays a valid OCI
// layout for other tools.
const AnnotationContainerdName = "io.containerd.image.name"

// DefaultPathEnv is added to an image's environment when Spec.Env sets no PATH.
const DefaultPathEnv = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// epoch is the timestamp of every file and of the image itself, so that the
// same inputs always give the same digest.
var epoch = time.Unix(0, 0).UTC()

// Spec describes an image: its name, its single layer and its run config.
type Spec struct {
	// Ref is the fully qualified name the image is imported under,
	// registry/repository:tag, e.g. "stickyvol.local/stickyvol:dev". A short
	// name such as "busybox" is refused: the CRI looks images up by their
	// normalized name (docker.io/library/busybox:latest), so a short name
	// would be imported under a name no pod asks for.
	Ref string

	Files    []File
	Dirs     []Dir
	Symlinks []Symlink

	Entrypoint []string
	Cmd        []string
	// Env holds KEY=value entries; DefaultPathEnv is added unless one sets PATH.
	Env        []string
	User       string
	WorkingDir string

	// Labels go into the image config, as a Dockerfile's LABEL lines do
	// (org.opencontainers.image.version, .source, ...).
	Labels map[string]string

	// Architecture defaults to the architecture this program runs on.
	Architecture string
}

// Write writes the image as an OCI layout tarball to w and returns the
// manifest digest, the digest `ctr images ls` shows for the imported image.
func Write(w io.Writer, spec Spec) (digest.Digest, error) {
	tag, err := parseRef(spec.Ref)
	if err != nil {
		return "", err
	}
	var blobs [][]byte
	manifestDesc, err := platformManifest(spec, &blobs)
	if err != nil {
		return "", err
	}
	manifestDesc.Annotations = nameAnnotations(spec.Ref, tag)
	if err := writeLayout(w, manifestDesc, blobs); err != nil {
		return "", err
	}
	return manifestDesc.Digest, nil
}

// WriteMulti writes one image for several platforms, one Spec each, all
// under ref (each Spec's own Ref is ignored): the layout's index.json names
// an image index, which lists one manifest per platform, as `docker buildx
// build --platform a,b` and containerd's exporter write it. containerd
// imports the whole index and runs the manifest of its own platform
// (`kind load image-archive` and `ctr images import --all-platforms` keep
// every platform). It returns the index digest, the image's digest.
func WriteMulti(w io.Writer, ref string, platforms []Spec) (digest.Digest, error) {
	tag, err := parseRef(ref)
	if err != nil {
		return "", err
	}
	var blobs [][]byte
	index := ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex}
	seen := map[string]bool{}
	for _, spec := range platforms {
		if seen[spec.architecture()] {
			return "", fmt.Errorf("image %s: platform linux/%s given twice", ref, spec.architecture())
		}
		seen[spec.architecture()] = true
		spec.Ref = ref
		desc, err := platformManifest(spec, &blobs)
		if err != nil {
			return "", err
		}
		index.Manifests = append(index.Manifests, desc)
	}
	if len(index.Manifests) == 0 {
		return "", fmt.Errorf("image %s: no platform", ref)
	}
	raw, err := json.Marshal(index)
	if err != nil {
		return "", err
	}
	blobs = append(blobs, raw)
	indexDesc := describe(ocispec.MediaTypeImageIndex, raw)
	indexDesc.Annotations = nameAnnotations(ref, tag)
	if err := writeLayout(w, indexDesc, blobs); err != nil {
		return "", err
	}
	return indexDesc.Digest, nil
}

// platformManifest builds spec's layer, config and manifest, appends them to
// blobs and returns the manifest's descriptor with its platform.
func platformManifest(spec Spec, blobs *[][]byte) (ocispec.Descriptor, error) {
	layer, err := buildLayer(spec)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("image %s: %w", spec.Ref, err)
	}
	layerDesc := describe(ocispec.MediaTypeImageLayer, layer)
	config, err := json.Marshal(spec.config(layerDesc.Digest))
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	configDesc := describe(ocispec.MediaTypeImageConfig, config)
	manifest, err := json.Marshal(ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    configDesc,
		Layers:    []ocispec.Descriptor{layerDesc},
	})
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	*blobs = append(*blobs, layer, config, manifest)
	desc := describe(ocispec.MediaTypeImageManifest, manifest)
	desc.Platform = &ocispec.Platform{OS: "linux", Architecture: spec.architecture()}
	return desc, nil
}

func nameAnnotations(ref, tag string) map[string]string {
	return map[string]string{
		AnnotationContainerdName:  ref,
		ocispec.AnnotationRefName: tag,
	}
}

// writeLayout writes the OCI layout tarball: oci-layout, an index.json
// naming top, and the blobs.
func writeLayout(w io.Writer, top ocispec.Descriptor, blobs [][]byte) error {
	index, err := json.Marshal(ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{top},
	})
	if err != nil {
		return err
	}
	layout, err := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
	if err != nil {
		return err
	}
	tw := tar.NewWriter(w)
	for _, dir := range []string{ocispec.ImageBlobsDir + "/", ocispec.ImageBlobsDir + "/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: 0o755, ModTime: epoch}); err != nil {
			return err
		}
	}
	written := map[digest.Digest]bool{}
	write := func(name string, data []byte) error {
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: epoch}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	if err := write(ocispec.ImageLayoutFile, layout); err != nil {
		return err
	}
	if err := write(ocispec.ImageIndexFile, index); err != nil {
		return err
	}
	for _, blob := range blobs {
		// Platforms may share a blob (the same config or layer).
		d := digest.FromBytes(blob)
		if written[d] {
			continue
		}
		written[d] = true
		if err := write(blobPath(d), blob); err != nil {
			return err
		}
	}
	return tw.Close()
}

// WriteFile writes the image tarball to path, creating its directory. It
// writes a temporary file beside path and renames it, so a reader never sees
// a half-written tarball.
func WriteFile(path string, spec Spec) (digest.Digest, error) {
	return writeFile(path, spec.Ref, func(w io.Writer) (digest.Digest, error) { return Write(w, spec) })
}

// WriteMultiFile is WriteFile for WriteMulti.
func WriteMultiFile(path, ref string, platforms []Spec) (digest.Digest, error) {
	return writeFile(path, ref, func(w io.Writer) (digest.Digest, error) { return WriteMulti(w, ref, platforms) })
}

func writeFile(path, ref string, write func(io.Writer) (digest.Digest, error)) (digest.Digest, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return "", err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp-*")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	dgst, err := write(tmp)
	if err == nil {
		err = tmp.Sync()
	}
	if closeErr := tmp.Close(); err == nil {
		err = closeErr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return "", fmt.Errorf("writing image %s to %s: %w", ref, path, err)
	}
	return dgst, nil
}

// parseRef checks that ref is a fully qualified registry/repository:tag and
// returns the tag.
func parseRef(ref string) (string, error) {
	tag, err := name.NewTag(ref, name.StrictValidation)
	if err != nil {
		return "", fmt.Errorf("image ref %q: want registry/repository:tag, e.g. stickyvol.local/stickyvol:dev: %w", ref, err)
	}
	// The registry part must be spelled out: name.NewTag would read
	// "library/busybox:1" as a Docker Hub repository and a tag-only name
	// as docker.io's, while containerd stores the name exactly as given.
	registry, _, _ := strings.Cut(ref, "/")
	if !strings.ContainsAny(registry, ".:") && registry != "localhost" {
		return "", fmt.Errorf("image ref %q: the first part must be a registry host (with a dot, a port, or localhost), e.g. stickyvol.local/%s", ref, ref)
	}
	return tag.TagStr(), nil
}

func (s Spec) architecture() string {
	if s.Architecture != "" {
		return s.Architecture
	}
	return runtime.GOARCH
}

func (s Spec) config(layer digest.Digest) ocispec.Image {
	env := s.Env
	if !hasPath(env) {
		env = append([]string{DefaultPathEnv}, env...)
	}
	created := epoch
	return ocispec.Image{
		Created:  &created,
		Platform: ocispec.Platform{OS: "linux", Architecture: s.architecture()},
		Config: ocispec.ImageConfig{
			User:       s.User,
			Env:        env,
			Entrypoint: s.Entrypoint,
			Cmd:        s.Cmd,
			WorkingDir: s.WorkingDir,
			Labels:     s.Labels,
		},
		RootFS: ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{layer}},
	}
}

func hasPath(env []string) bool {
	for _, kv := range env {
		if strings.HasPrefix(kv, "PATH=") {
			return true
		}
	}
	return false
}

func describe(mediaType string, blob []byte) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(blob), Size: int64(len(blob))}
}

func blobPath(d digest.Digest) string {
	return ocispec.ImageBlobsDir + "/" + d.Algorithm().String() + "/" + d.Encoded()
}

// errBadEntry marks a Spec entry that cannot be put in a layer.
var errBadEntry = errors.New("bad image entry")

// buildLayer returns the layer tar. It is built in memory: images made here
// are small (a static binary or two), and the manifest needs the layer's
// digest and size before the layer itself goes into the tarball.
func buildLayer(spec Spec) ([]byte, error) {
	entries, err := spec.entries()
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		if err := e.write(tw); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
