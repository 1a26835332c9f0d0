package framework

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// PluginName is the name under which kubectl finds stickyvol as a plugin.
const PluginName = "kubectl-stickyvol"

// InstallPlugin makes `kubectl stickyvol` work in a shell that
// `make cluster-env` set up: it links kubectl-stickyvol, in the cluster's
// bin directory beside kubectl (that shell's PATH), to the stickyvol binary
// BuildImages built into cacheDir/bin.
func (f *Framework) InstallPlugin(cacheDir string) error {
	link := filepath.Join(f.Cluster.Dir(), "bin", PluginName)
	if err := os.Remove(link); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return os.Symlink(filepath.Join(cacheDir, "bin", "stickyvol"), link)
}

// KubectlCommand is the command Kubectl runs, for callers that read its
// output as it comes (kubectl get -w).
func (f *Framework) KubectlCommand(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(f.Cluster.Dir(), "bin", "kubectl"), args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+f.Cluster.Kubeconfig(),
		"PATH="+filepath.Join(f.Cluster.Dir(), "bin")+string(os.PathListSeparator)+os.Getenv("PATH"))
	return cmd
}

// Kubectl runs the cluster's kubectl as a user would after
// `eval "$(make -s cluster-env)"`: KUBECONFIG and PATH set in the
// environment, no --kubeconfig flag, so plugins find the cluster as kubectl
// does. It returns stdout; a failure holds stderr.
func (f *Framework) Kubectl(ctx context.Context, args ...string) ([]byte, error) {
	cmd := f.KubectlCommand(ctx, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("kubectl %s: %w\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return out, nil
}
