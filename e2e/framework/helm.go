package framework

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/yaml"

	"github.com/stickyvol/stickyvol/capacity"
	"github.com/stickyvol/stickyvol/e2e/cluster"
)

// The chart and how the suites install it.
const (
	HelmChart   = "deploy/helm/stickyvol"
	HelmRelease = "stickyvol"
	// helmModule is built into the Helm CLI at the version go.mod pins
	// for the chart's render test, so the CLI and the test agree.
	helmModule = "helm.sh/helm/v4"
)

// EnsureHelm returns the Helm CLI, cacheDir/bin/helm-<version>, building it
// from the module proxy the first time (a few minutes; cached after).
func EnsureHelm(ctx context.Context, cacheDir, repoDir string, out io.Writer) (string, error) {
	version, err := cluster.RequiredVersion(filepath.Join(repoDir, "go.mod"), helmModule)
	if err != nil {
		return "", err
	}
	pkg := helmModule + "/cmd/helm"
	dst := filepath.Join(cacheDir, "bin", "helm-"+version)
	err = cluster.EnsureBuilt(ctx, cluster.ModuleBuildConfig{
		CacheDir: cacheDir, Out: out, Name: "helm", Module: helmModule, Version: version, Packages: []string{pkg},
	}, []cluster.BuildTarget{{Name: "helm", Package: pkg, Dst: dst}})
	return dst, err
}

// Helm runs the Helm CLI against the cluster, as a user with KUBECONFIG set
// would, with Helm's cache, config and data under the cluster's directory
// instead of the home directory.
func (f *Framework) Helm(ctx context.Context, helm string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, helm, args...)
	cmd.Dir = f.RepoDir
	home := filepath.Join(f.Cluster.Dir(), "helm")
	cmd.Env = append(os.Environ(), "KUBECONFIG="+f.Cluster.Kubeconfig(),
		"HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("helm %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return out, nil
}

// HelmLocalValues are the chart values that give what LocalOverlay gives:
// the kind overlay's default class and the agent off kwok's fake nodes; the
// chart adds the VolumeSnapshotClass by itself, as the local cluster serves
// the snapshot API. The deploy tests check that they render the overlay's
// objects.
const HelmLocalValues = "deploy/helm/local-values.yaml"

// helmValues are the values Deploy adds to the overlay: the image digest on
// the pod template, so a rebuilt image rolls the pods, and cfg.AgentArgs.
func helmValues(cfg DeployConfig) map[string]any {
	return map[string]any{
		"extraArgs":      cfg.AgentArgs,
		"podAnnotations": map[string]any{annImage: cfg.Image.Digest.String()},
	}
}

// HelmInstall installs the chart as the README tells users to, into
// Namespace, and waits as Deploy does.
func (f *Framework) HelmInstall(ctx context.Context, helm string, cfg DeployConfig, logf Logf) error {
	values, err := yaml.Marshal(helmValues(cfg))
	if err != nil {
		return err
	}
	file := filepath.Join(f.Cluster.Dir(), "helm-values.yaml")
	if err := os.WriteFile(file, values, 0o644); err != nil {
		return err
	}
	if _, err := f.Helm(ctx, helm, "install", HelmRelease, HelmChart, "--namespace", Namespace,
		"--create-namespace", "--values", HelmLocalValues, "--values", file); err != nil {
		return err
	}
	logf("helm install %s %s -n %s --create-namespace --values %s --values %s", HelmRelease, HelmChart, Namespace, HelmLocalValues, file)
	return f.waitDeployed(ctx, logf)
}

// HelmUninstall uninstalls the release and returns what it left behind of
// stickyvol beyond what the README says it keeps (the namespace, the
// agents' Lease, the volumes of claims that still exist): any object of the
// release, a driver still registered on a node, an agent or controller pod still running.
func (f *Framework) HelmUninstall(ctx context.Context, helm string) ([]string, error) {
	// As the README says: delete the claims first, and let the agents
	// delete their volumes, or the PVs keep their finalizer with no agent
	// left to remove it.
	_, err := WaitFor(ctx, f.Volumes(), &v1.PersistentVolume{}, func(pvs []*v1.PersistentVolume) (bool, error) {
		return !slices.ContainsFunc(pvs, func(pv *v1.PersistentVolume) bool {
			return pv.Spec.CSI != nil && pv.Spec.CSI.Driver == DriverName
		}), nil
	})
	if err != nil {
		return nil, fmt.Errorf("waiting for the volumes of the deleted claims to go before uninstalling: %w", err)
	}
	// Foreground: the DaemonSet goes only after its pods.
	if _, err := f.Helm(ctx, helm, "uninstall", HelmRelease, "--namespace", Namespace, "--wait", "--cascade", "foreground"); err != nil {
		return nil, err
	}
	// helm returns while the DaemonSet, in foreground deletion, still
	// waits for its pods, and an agent takes up to its grace period (10 s)
	// to stop and take the driver off its node's CSINode: give it all a
	// minute to go.
	var left []string
	err = wait.PollUntilContextTimeout(ctx, time.Second, time.Minute, true, func(ctx context.Context) (bool, error) {
		left, err = f.leftBehind(ctx)
		return len(left) == 0, err
	})
	if err != nil && len(left) == 0 {
		return nil, err
	}
	return left, nil
}

// leftBehind lists what of stickyvol is still there after an uninstall: an
// object of the release (the VolumeSnapshotClass among them), the CSIDriver, the driver on a node's CSINode, a
// CSIStorageCapacity of the driver, an agent or controller pod.
func (f *Framework) leftBehind(ctx context.Context) ([]string, error) {
	var left []string
	selector := metav1.ListOptions{LabelSelector: "app.kubernetes.io/instance=" + HelmRelease}
	for _, r := range []schema.GroupVersionResource{
		{Group: "apps", Version: "v1", Resource: "daemonsets"},
		{Group: "apps", Version: "v1", Resource: "deployments"},
		{Group: "admissionregistration.k8s.io", Version: "v1", Resource: "validatingadmissionpolicies"},
		{Group: "admissionregistration.k8s.io", Version: "v1", Resource: "validatingadmissionpolicybindings"},
		{Version: "v1", Resource: "serviceaccounts"},
		{Version: "v1", Resource: "services"},
		{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "roles"},
		{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "rolebindings"},
		{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterroles"},
		{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterrolebindings"},
		{Group: "storage.k8s.io", Version: "v1", Resource: "csidrivers"},
		{Group: "storage.k8s.io", Version: "v1", Resource: "storageclasses"},
		{Group: "snapshot.storage.k8s.io", Version: "v1", Resource: "volumesnapshotclasses"},
	} {
		list, err := f.Dynamic.Resource(r).List(ctx, selector)
		if apierrors.IsNotFound(err) && r.Group == "snapshot.storage.k8s.io" {
			continue // a cluster without the snapshot CRDs, where the chart renders no class
		}
		if err != nil {
			return nil, fmt.Errorf("listing %s: %w", r.Resource, err)
		}
		for _, obj := range list.Items {
			left = append(left, fmt.Sprintf("%s %s", r.Resource, klogName(obj.GetNamespace(), obj.GetName())))
		}
	}
	if _, err := f.Client.StorageV1().CSIDrivers().Get(ctx, DriverName, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		left = append(left, fmt.Sprintf("CSIDriver %s (%v)", DriverName, err))
	}
	// The agents' published capacity goes with the DaemonSet that owns it.
	capacities, err := f.Client.StorageV1().CSIStorageCapacities(Namespace).List(ctx, metav1.ListOptions{
		LabelSelector: capacity.LabelDriverName + "=" + DriverName})
	if err != nil {
		return nil, err
	}
	for _, c := range capacities.Items {
		left = append(left, "CSIStorageCapacity "+klogName(c.Namespace, c.Name))
	}
	csiNodes, err := f.Client.StorageV1().CSINodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	for i := range csiNodes.Items {
		if listsDriver(&csiNodes.Items[i]) {
			left = append(left, "the driver on CSINode "+csiNodes.Items[i].Name)
		}
	}
	pods, err := f.Client.CoreV1().Pods(Namespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name in (stickyvol-node,stickyvol-controller)"})
	if err != nil {
		return nil, err
	}
	for _, p := range pods.Items {
		left = append(left, "pod "+klogName(p.Namespace, p.Name))
	}
	return left, nil
}

func listsDriver(cn *storagev1.CSINode) bool {
	return slices.ContainsFunc(cn.Spec.Drivers, func(d storagev1.CSINodeDriver) bool { return d.Name == DriverName })
}

func klogName(namespace, name string) string {
	if namespace == "" {
		return name
	}
	return namespace + "/" + name
}
