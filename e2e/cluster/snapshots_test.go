package cluster

import (
	"slices"
	"strings"
	"testing"

	"golang.org/x/mod/module"
	rbacv1 "k8s.io/api/rbac/v1"
)

func TestSnapshotControllerArgs(t *testing.T) {
	argv := snapshotControllerArgs("/cache/bin/snapshot-controller-v8.7.0", "/cluster/kubeconfig/snapshot-controller.kubeconfig", 4321)
	if argv[0] != "/cache/bin/snapshot-controller-v8.7.0" {
		t.Errorf("runs %q, want the binary", argv[0])
	}
	for _, want := range []string{
		"--kubeconfig=/cluster/kubeconfig/snapshot-controller.kubeconfig",
		// One controller, no Lease to wait for at start.
		"--leader-election=false",
		// Each node's agent takes only the contents labelled with its node.
		"--enable-distributed-snapshotting",
		// waitReady's check.
		"--http-endpoint=127.0.0.1:4321",
	} {
		if !slices.Contains(argv, want) {
			t.Errorf("%q lacks %s", argv, want)
		}
	}
}

// The CRDs are all those of the client module, named as the API server
// names them: <plural>.<group>.
func TestSnapshotCRDFiles(t *testing.T) {
	var kinds []string
	for name, src := range snapshotCRDs.files {
		group, plural, ok := strings.Cut(strings.TrimSuffix(name, ".yaml"), "_")
		if !ok || (group != "snapshot.storage.k8s.io" && group != "groupsnapshot.storage.k8s.io") {
			t.Errorf("%s: not a snapshot CRD file", name)
		}
		if src != "config/crd/"+name {
			t.Errorf("%s is copied from %s, want config/crd/%s", name, src, name)
		}
		kinds = append(kinds, plural)
	}
	slices.Sort(kinds)
	want := []string{
		"volumegroupsnapshotclasses", "volumegroupsnapshotcontents", "volumegroupsnapshots",
		"volumesnapshotclasses", "volumesnapshotcontents", "volumesnapshots",
	}
	if !slices.Equal(kinds, want) {
		t.Errorf("CRDs %q, want %q", kinds, want)
	}
	if snapshotCRDs.module != snapshotClientModule || !slices.ContainsFunc(snapshotterModule.requires, func(r module.Version) bool {
		return r.Path == snapshotClientModule && r.Version == SnapshotterVersion
	}) {
		t.Errorf("CRDs come from %s, helper module requires %v: want the client module at %s", snapshotCRDs.module, snapshotterModule.requires, SnapshotterVersion)
	}
}

// crdYAML has the shape of a file of the client module's config/crd/: a
// document start, a comment-only document and the CRD.
const crdYAML = `---
# generated
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: volumesnapshots.snapshot.storage.k8s.io
spec:
  group: snapshot.storage.k8s.io
  scope: Namespaced
status:
  conditions:
  - type: NamesAccepted
    status: "True"
  - type: Established
    status: "False"
`

func TestDecodeManifests(t *testing.T) {
	objs, err := decodeManifests([]byte(crdYAML))
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 1 || objs[0].GetKind() != "CustomResourceDefinition" || objs[0].GetName() != "volumesnapshots.snapshot.storage.k8s.io" {
		t.Fatalf("decoded %v, want the one CRD", objs)
	}
	if established(objs[0]) {
		t.Error("a CRD whose Established condition is False counts as established")
	}
	conds := objs[0].Object["status"].(map[string]any)["conditions"].([]any)
	conds[1].(map[string]any)["status"] = "True"
	if !established(objs[0]) {
		t.Error("a CRD whose Established condition is True does not count as established")
	}
	if _, err := decodeManifests([]byte("kind: [")); err == nil {
		t.Error("malformed YAML decoded without an error")
	}
}

// TestSnapshotControllerRole checks the rights the snapshot-controller
// cannot work without, and that it gets nothing on the core API it does not
// need.
func TestSnapshotControllerRole(t *testing.T) {
	role := snapshotControllerRole()
	allows := func(group, resource, verb string) bool {
		return slices.ContainsFunc(role.Rules, func(r rbacv1.PolicyRule) bool {
			return slices.Contains(r.APIGroups, group) && slices.Contains(r.Resources, resource) && slices.Contains(r.Verbs, verb)
		})
	}
	for _, need := range [][3]string{
		{"", "nodes", "list"}, {"", "nodes", "watch"}, // distributed snapshotting
		{"", "persistentvolumes", "watch"},
		{"", "persistentvolumeclaims", "update"}, // its finalizer on a source claim
		{"", "events", "create"},
		{"snapshot.storage.k8s.io", "volumesnapshotcontents", "create"},
		{"snapshot.storage.k8s.io", "volumesnapshotcontents", "delete"},
		{"snapshot.storage.k8s.io", "volumesnapshots", "update"},
		{"snapshot.storage.k8s.io", "volumesnapshots/status", "patch"},
		{"snapshot.storage.k8s.io", "volumesnapshotclasses", "watch"},
		{"groupsnapshot.storage.k8s.io", "volumegroupsnapshotcontents", "create"},
		{"groupsnapshot.storage.k8s.io", "volumegroupsnapshots/status", "patch"},
	} {
		if !allows(need[0], need[1], need[2]) {
			t.Errorf("the snapshot-controller may not %s %q in group %q", need[2], need[1], need[0])
		}
	}
	for _, never := range [][3]string{
		{"", "persistentvolumes", "create"}, {"", "persistentvolumes", "update"}, {"", "persistentvolumeclaims", "create"},
		{"", "persistentvolumeclaims", "delete"}, {"", "nodes", "update"}, {"", "secrets", "get"},
	} {
		if allows(never[0], never[1], never[2]) {
			t.Errorf("the snapshot-controller may %s %q in group %q, which it never does", never[2], never[1], never[0])
		}
	}
	for _, r := range role.Rules {
		if slices.Contains(r.Verbs, "*") || slices.Contains(r.Resources, "*") || slices.Contains(r.APIGroups, "*") {
			t.Errorf("rule %v grants a wildcard", r)
		}
	}
}
