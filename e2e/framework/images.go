package framework

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/stickyvol/stickyvol/e2e/cluster"
	"github.com/stickyvol/stickyvol/e2e/image"
)

// The images the deployment and the example run. The tag is not "latest", so
// kubelet's default pull policy is IfNotPresent and the loaded image is used.
const (
	AgentImage = "stickyvol.local/stickyvol:dev"
	DemoImage  = "stickyvol.local/demo:dev"
)

// Image is an OCI tarball and the digest of the image in it (a manifest, or
// for an image of several platforms its index).
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
// cacheDir/images: stickyvol.tar, the same tarball `make image` makes (an
// image index for every AgentPlatforms, cross-compiled), and demo.tar. Go's
// build cache makes a rebuild of unchanged sources quick.
func (f *Framework) BuildImages(ctx context.Context, cacheDir string) (Images, error) {
	return BuildImages(ctx, f.RepoDir, cacheDir)
}

// AgentPlatforms are the architectures of the agent image: its index holds
// one manifest per platform, and each node runs its own. The demo image
// carries the host's busybox and so has the host's architecture only.
var AgentPlatforms = []string{"amd64", "arm64"}

// SourceURL is the org.opencontainers.image.source label of the images.
const SourceURL = "https://github.com/stickyvol/stickyvol"

// BuildImages is Framework.BuildImages for callers without a cluster yet.
// The host's stickyvol is cacheDir/bin/stickyvol; the other platforms'
// binaries are cacheDir/bin/linux-<arch>/stickyvol.
func BuildImages(ctx context.Context, repoDir, cacheDir string) (Images, error) {
	binDir, imgDir := filepath.Join(cacheDir, "bin"), filepath.Join(cacheDir, "images")
	version := SourceVersion(ctx, repoDir)
	for _, cmd := range []string{"stickyvol", "stickyvol-demo"} {
		if err := goBuild(ctx, repoDir, cmd, filepath.Join(binDir, cmd), version, runtime.GOARCH); err != nil {
			return Images{}, err
		}
	}
	labels := imageLabels(ctx, repoDir, version)
	var agent []image.Spec
	for _, arch := range AgentPlatforms {
		bin := filepath.Join(binDir, "stickyvol")
		if arch != runtime.GOARCH {
			bin = filepath.Join(binDir, "linux-"+arch, "stickyvol")
			if err := goBuild(ctx, repoDir, "stickyvol", bin, version, arch); err != nil {
				return Images{}, err
			}
		}
		files := []image.File{{Path: "/stickyvol", Source: bin, Mode: 0o755}}
		if arch == runtime.GOARCH {
			tools, err := fileSystemTools()
			if err != nil {
				return Images{}, err
			}
			files = append(files, tools...)
		}
		agent = append(agent, image.Spec{
			Files:        files,
			Entrypoint:   []string{"/stickyvol"},
			Labels:       labels,
			Architecture: arch,
		})
	}
	demo, err := demoSpec(ctx, filepath.Join(binDir, "stickyvol-demo"))
	if err != nil {
		return Images{}, err
	}
	demo.Labels = labels
	im := Images{
		Agent: Image{Ref: AgentImage, Tarball: filepath.Join(imgDir, "stickyvol.tar")},
		Demo:  Image{Ref: DemoImage, Tarball: filepath.Join(imgDir, "demo.tar")},
	}
	if im.Agent.Digest, err = image.WriteMultiFile(im.Agent.Tarball, AgentImage, agent); err != nil {
		return Images{}, err
	}
	if im.Demo.Digest, err = image.WriteFile(im.Demo.Tarball, demo); err != nil {
		return Images{}, err
	}
	return im, nil
}

// FileSystemTools are the programs the agent runs for image volumes
// (mkfs, and the offline ext4 resize); the Dockerfile installs their
// packages, e2fsprogs and xfsprogs.
var FileSystemTools = []string{"mke2fs", "e2fsck", "resize2fs", "mkfs.xfs"}

// fileSystemTools returns the host's FileSystemTools with the libraries
// they need, for the agent image of the host's architecture. The other
// architectures' images go without: image volumes fail there with an error
// that names the missing program (see the README).
func fileSystemTools() ([]image.File, error) {
	var paths []string
	for _, name := range FileSystemTools {
		p, err := exec.LookPath(name)
		if err != nil {
			p = filepath.Join("/usr/sbin", name)
		}
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("the agent image needs %s for image volumes: %w (hack/install-deps.sh installs it)", name, err)
		}
		paths = append(paths, p)
	}
	files, err := image.HostPrograms(paths...)
	if err != nil {
		return nil, fmt.Errorf("the agent image's file system tools: %w", err)
	}
	return files, nil
}

// imageLabels are the OCI labels the Dockerfile sets too.
func imageLabels(ctx context.Context, repoDir, version string) map[string]string {
	labels := map[string]string{
		ocispec.AnnotationTitle:       "stickyvol",
		ocispec.AnnotationDescription: "Node-local persistent volumes for Kubernetes: one CSI driver and provisioner per node",
		ocispec.AnnotationVersion:     version,
		ocispec.AnnotationSource:      SourceURL,
	}
	cmd := exec.CommandContext(ctx, "git", "rev-parse", "HEAD")
	cmd.Dir = repoDir
	if out, err := cmd.Output(); err == nil {
		labels[ocispec.AnnotationRevision] = strings.TrimSpace(string(out))
	}
	return labels
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

// AgentBinary is where BuildImages and BuildAgent put the host's stickyvol
// binary: cacheDir/bin/stickyvol.
func AgentBinary(cacheDir string) string { return filepath.Join(cacheDir, "bin", "stickyvol") }

// BuildAgent builds the host's stickyvol binary alone, as BuildImages does,
// for callers that run it as host processes and need no image.
func BuildAgent(ctx context.Context, repoDir, cacheDir string) (string, error) {
	bin := AgentBinary(cacheDir)
	return bin, goBuild(ctx, repoDir, "stickyvol", bin, SourceVersion(ctx, repoDir), runtime.GOARCH)
}

// goBuild builds ./cmd/<cmd> as `make build` does, for linux/<arch>.
func goBuild(ctx context.Context, repoDir, cmd, out, version, arch string) error {
	build := exec.CommandContext(ctx, "go", "build", "-trimpath",
		"-ldflags", "-s -w -X main.version="+version, "-o", out, "./cmd/"+cmd)
	build.Dir = repoDir
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
	if output, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/%s: %w\n%s", cmd, err, output)
	}
	return nil
}

// SourceVersion is what `make` stamps into binaries: git describe, or "dev".
func SourceVersion(ctx context.Context, repoDir string) string {
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
