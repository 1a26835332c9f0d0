package framework

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/stickyvol/stickyvol/e2e/cluster"
	"github.com/stickyvol/stickyvol/e2e/image"
)

// The images the deployment and the example run. The tag is not "latest", so
// kubelet's default pull policy is IfNotPresent and the loaded image is used.
const (
	AgentImage = "stickyvol.local/stickyvol:dev"
	DemoImage  = "stickyvol.local/demo:dev"
)

// Image is an OCI tarball and the digest of the manifest in it.
type Image struct {
	Ref, Tarball string
	Digest       digest.Digest
}

// Images are the tarballs BuildImages made.
type Images struct {
	// Agent runs `stickyvol node` (deploy/base).
	Agent Image
	// Demo holds busybox and stickyvol-demo (deploy/examples).
	Demo Image
}

// All returns both images.
func (im Images) All() []Image { return []Image{im.Agent, im.Demo} }

// BuildImages builds the stickyvol and stickyvol-demo binaries from the
// source tree as `make build` does (static, trimmed, version stamped) into
// cacheDir/bin, and packs them as the images AgentImage and DemoImage into
// cacheDir/images: stickyvol.tar, the same tarball `make image` makes, and
// demo.tar. Go's build cache makes a rebuild of unchanged sources quick.
func (f *Framework) BuildImages(ctx context.Context, cacheDir string) (Images, error) {
	return BuildImages(ctx, f.RepoDir, cacheDir)
}

// BuildImages is Framework.BuildImages for callers without a cluster yet.
func BuildImages(ctx context.Context, repoDir, cacheDir string) (Images, error) {
	binDir, imgDir := filepath.Join(cacheDir, "bin"), filepath.Join(cacheDir, "images")
	version := sourceVersion(ctx, repoDir)
	for _, cmd := range []string{"stickyvol", "stickyvol-demo"} {
		if err := goBuild(ctx, repoDir, cmd, filepath.Join(binDir, cmd), version); err != nil {
			return Images{}, err
		}
	}
	agent := image.Spec{
		Ref:        AgentImage,
		Files:      []image.File{{Path: "/stickyvol", Source: filepath.Join(binDir, "stickyvol"), Mode: 0o755}},
		Entrypoint: []string{"/stickyvol"},
	}
	demo, err := demoSpec(ctx, filepath.Join(binDir, "stickyvol-demo"))
	if err != nil {
		return Images{}, err
	}
	var im Images
	for _, x := range []struct {
		dst  *Image
		spec image.Spec
		file string
	}{{&im.Agent, agent, "stickyvol.tar"}, {&im.Demo, demo, "demo.tar"}} {
		path := filepath.Join(imgDir, x.file)
		dgst, err := image.WriteFile(path, x.spec)
		if err != nil {
			return Images{}, err
		}
		*x.dst = Image{Ref: x.spec.Ref, Tarball: path, Digest: dgst}
	}
	return im, nil
}

// LoadImages imports the images into every node of the cluster.
func (f *Framework) LoadImages(ctx context.Context, im Images) error {
	for _, img := range im.All() {
		if err := f.Cluster.LoadImage(ctx, img.Tarball); err != nil {
			return fmt.Errorf("loading %s: %w", img.Ref, err)
		}
	}
	return nil
}

func goBuild(ctx context.Context, repoDir, cmd, out, version string) error {
	build := exec.CommandContext(ctx, "go", "build", "-trimpath",
		"-ldflags", "-s -w -X main.version="+version, "-o", out, "./cmd/"+cmd)
	build.Dir = repoDir
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if output, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/%s: %w\n%s", cmd, err, output)
	}
	return nil
}

// sourceVersion is what `make` stamps into binaries: git describe, or "dev".
func sourceVersion(ctx context.Context, repoDir string) string {
	cmd := exec.CommandContext(ctx, "git", "describe", "--tags", "--always", "--dirty")
	cmd.Dir = repoDir
	out, err := cmd.Output()
	if v := strings.TrimSpace(string(out)); err == nil && v != "" {
		return v
	}
	return "dev"
}

// demoSpec is the example's image, as the Dockerfile's demo target builds it
// on busybox: the local cluster's busybox (a link per applet in /bin: sh,
// date, sleep, cat, ... for the pods' scripts and for `kubectl exec`) and
// stickyvol-demo for HTTP, since Debian's static busybox wget crashes.
func demoSpec(ctx context.Context, demoBinary string) (image.Spec, error) {
	spec, err := cluster.BusyboxSpec(ctx, DemoImage)
	if err != nil {
		return image.Spec{}, fmt.Errorf("demo image: %w", err)
	}
	spec.Files = append(spec.Files, image.File{Path: "/bin/stickyvol-demo", Source: demoBinary, Mode: 0o755})
	// As the Dockerfile's demo target: the program needs no privilege.
	spec.User = "65532:65532"
	spec.Cmd = []string{"/bin/stickyvol-demo", "serve"}
	return spec, nil
}
