// Package conformance runs the suites that judge every CSI driver against
// stickyvol on the project's local cluster (e2e/cluster):
//
//   - the upstream Kubernetes External.Storage e2e suites, from a slim e2e
//     test binary built from the Kubernetes release the cluster runs and a
//     test driver file (test-driver.yaml) that declares what stickyvol
//     supports;
//   - csi-sanity, the CSI specification's own suite, against the driver
//     inside the running DaemonSet pod on a real node, through its real
//     socket.
//
// Programs are built from the Go module proxy and cached like the cluster's
// (EnsureBinaries); the images the suites ask for are made on this machine
// under their upstream names (EnsureImages); a JUnit report is kept and
// summed up (ReadJUnit, Summary).
package conformance
