package conformance

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/stickyvol/stickyvol/e2e/cluster"
	"github.com/stickyvol/stickyvol/e2e/image"
)

// The images the selected storage suites run, under the names
// test/utils/image/manifest.go gives them in the Kubernetes release the e2e
// binary is built from. Test pods ask for them with imagePullPolicy
// IfNotPresent, so an image imported into every node under the exact name
// is used and nothing is pulled. Check these names when KubernetesVersion
// changes: a wrong tag shows up as pods stuck in ErrImagePull.
const (
	// BusyboxImage is the default test image on Linux: shell, dd, mount,
	// stat, id and the like.
	BusyboxImage = "registry.k8s.io/e2e-test-images/busybox:1.37.0-2"
	// AgnhostImage runs /agnhost (entrypoint) and shell scripts.
	AgnhostImage = "registry.k8s.io/e2e-test-images/agnhost:2.66.1"
	// NginxImage serves a volume's index.html in the volumes suite, through
	// a shell command: busybox's sh is all it needs.
	NginxImage = "registry.k8s.io/e2e-test-images/nginx:1.27.0-2"
	// GlibcDNSTestingImage writes and checks data (sh, dd, sha256sum) in
	// the multiVolume suite.
	GlibcDNSTestingImage = "registry.k8s.io/e2e-test-images/glibc-dns-testing:2.1.1"
)

// imageRecipe is part of every image's cache key: change it when the way the
// images are put together changes and the inputs the key hashes do not.
const imageRecipe = "1"

// Image is an image tarball EnsureImages made.
type Image struct {
	Ref, Tarball string
}

// EnsureImages returns the tarballs of the images the storage suites run,
// under cacheDir/images: busybox-based, and for agnhost with the agnhost
// program at /agnhost, its entrypoint, and "pause" as the default command,
// as upstream's image has them. A tarball's name carries a hash of
// everything that goes into it, so it is made again only when that changes.
func EnsureImages(ctx context.Context, cacheDir, agnhost string) ([]Image, error) {
	var images []Image
	for _, ref := range []string{BusyboxImage, AgnhostImage, NginxImage, GlibcDNSTestingImage} {
		spec, err := cluster.BusyboxSpec(ctx, ref)
		if err != nil {
			return nil, err
		}
		if ref == AgnhostImage {
			spec.Files = append(spec.Files, image.File{Path: "/agnhost", Source: agnhost, Mode: 0o755})
			spec.Entrypoint, spec.Cmd = []string{"/agnhost"}, []string{"pause"}
		}
		key, err := specKey(spec)
		if err != nil {
			return nil, err
		}
		prefix := filepath.Join(cacheDir, "images", "e2e-"+imageFileName(ref)+"-")
		path := prefix + key + ".tar"
		if _, err := os.Stat(path); err != nil {
			// Tarballs of older inputs, and temporary files of a killed run.
			stale, _ := filepath.Glob(prefix + "*.tar*")
			for _, p := range stale {
				os.Remove(p)
			}
			if _, err := image.WriteFile(path, spec); err != nil {
				return nil, err
			}
		}
		images = append(images, Image{Ref: ref, Tarball: path})
	}
	return images, nil
}

// imageFileName turns registry/path/name:tag into name-tag.
func imageFileName(ref string) string {
	name := ref[strings.LastIndex(ref, "/")+1:]
	return strings.ReplaceAll(name, ":", "-")
}

// specKey hashes an image spec with the contents of the host files it copies.
func specKey(spec image.Spec) (string, error) {
	desc, err := json.Marshal(spec)
	if err != nil {
		return "", err
	}
	inputs := [][]byte{[]byte(imageRecipe), desc}
	for _, f := range spec.Files {
		if f.Source == "" {
			continue
		}
		data, err := os.ReadFile(f.Source)
		if err != nil {
			return "", fmt.Errorf("image %s: %w", spec.Ref, err)
		}
		inputs = append(inputs, data)
	}
	return shortHash(inputs...), nil
}
