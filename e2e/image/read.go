package image

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Layout is an OCI layout tarball read into memory, for tests and checks of
// the images this package writes.
type Layout struct {
	// Top is the one entry of index.json: a manifest, or an image index for
	// an image of several platforms.
	Top   ocispec.Descriptor
	blobs map[digest.Digest][]byte
}

// ReadLayout reads an OCI layout tarball that names one image.
func ReadLayout(path string) (*Layout, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	l := &Layout{blobs: map[digest.Digest][]byte{}}
	var index []byte
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if hdr.Typeflag != tar.TypeReg {
			continue
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		switch {
		case hdr.Name == ocispec.ImageIndexFile:
			index = data
		case strings.HasPrefix(hdr.Name, ocispec.ImageBlobsDir+"/sha256/"):
			l.blobs[digest.NewDigestFromEncoded(digest.SHA256, strings.TrimPrefix(hdr.Name, ocispec.ImageBlobsDir+"/sha256/"))] = data
		}
	}
	var top ocispec.Index
	if err := json.Unmarshal(index, &top); err != nil {
		return nil, fmt.Errorf("%s: index.json: %w", path, err)
	}
	if len(top.Manifests) != 1 {
		return nil, fmt.Errorf("%s: index.json names %d images, want 1", path, len(top.Manifests))
	}
	l.Top = top.Manifests[0]
	return l, nil
}

// Blob returns a blob after checking its digest and size.
func (l *Layout) Blob(d ocispec.Descriptor) ([]byte, error) {
	b, ok := l.blobs[d.Digest]
	if !ok {
		return nil, fmt.Errorf("blob %s missing", d.Digest)
	}
	if digest.FromBytes(b) != d.Digest || int64(len(b)) != d.Size {
		return nil, fmt.Errorf("blob %s: content does not match its descriptor", d.Digest)
	}
	return b, nil
}

// Manifests returns the descriptors of the image's platform manifests.
func (l *Layout) Manifests() ([]ocispec.Descriptor, error) {
	if l.Top.MediaType == ocispec.MediaTypeImageManifest {
		return []ocispec.Descriptor{l.Top}, nil
	}
	raw, err := l.Blob(l.Top)
	if err != nil {
		return nil, err
	}
	var index ocispec.Index
	if err := json.Unmarshal(raw, &index); err != nil {
		return nil, err
	}
	return index.Manifests, nil
}

// Config returns the image config of one platform's manifest.
func (l *Layout) Config(manifest ocispec.Descriptor) (ocispec.Image, error) {
	var config ocispec.Image
	m, err := l.manifest(manifest)
	if err != nil {
		return config, err
	}
	raw, err := l.Blob(m.Config)
	if err != nil {
		return config, err
	}
	err = json.Unmarshal(raw, &config)
	return config, err
}

// File returns the content of a regular file in one platform's image.
func (l *Layout) File(manifest ocispec.Descriptor, path string) ([]byte, error) {
	m, err := l.manifest(manifest)
	if err != nil {
		return nil, err
	}
	name := strings.TrimPrefix(path, "/")
	for _, layer := range m.Layers {
		raw, err := l.Blob(layer)
		if err != nil {
			return nil, err
		}
		tr := tar.NewReader(bytes.NewReader(raw))
		for {
			hdr, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return nil, err
			}
			if hdr.Name == name && hdr.Typeflag == tar.TypeReg {
				return io.ReadAll(tr)
			}
		}
	}
	return nil, fmt.Errorf("%s: not in image %s", path, manifest.Digest)
}

func (l *Layout) manifest(d ocispec.Descriptor) (ocispec.Manifest, error) {
	var m ocispec.Manifest
	raw, err := l.Blob(d)
	if err != nil {
		return m, err
	}
	err = json.Unmarshal(raw, &m)
	return m, err
}
