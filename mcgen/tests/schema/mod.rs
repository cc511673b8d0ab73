// SPDX-License-Identifier: Apache-2.0
//! The fields and types of the upstream API objects mcgen writes, as their Go types declare
//! them (json tags, pointer = optional, `+required`, enums of string constants, list-map
//! keys), written by hand from:
//! - kubernetes/api core/v1/types.go (Namespace, ServiceAccount, ConfigMap, PodSpec,
//!   Container, Volume, HostPathVolumeSource, ConfigMapVolumeSource, VolumeMount, Probe,
//!   ExecAction, SecurityContext, Toleration, ResourceRequirements, EnvVar),
//! - kubernetes/api apps/v1/types.go (DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy,
//!   RollingUpdateDaemonSet), rbac/v1/types.go (RoleBinding, Subject, RoleRef),
//! - kubernetes/apimachinery meta/v1 (ObjectMeta, LabelSelector),
//! - openshift/api operator/v1/types_machineconfiguration.go (MachineConfiguration,
//!   NodeDisruptionPolicyConfig and its files, units and actions), machineconfiguration/v1
//!   types.go (MachineConfig, MachineConfigPool status.configuration),
//! - open-cluster-management-io/governance-policy-propagator api/v1 policy_types.go (Policy,
//!   PolicyTemplate, PolicyDependency) and placementbinding_types.go (PlacementBinding,
//!   PlacementSubject, Subject), open-cluster-management-io/api cluster/v1beta1
//!   types_placement.go (Placement, ClusterPredicate, ClusterSelector, Toleration),
//!   open-cluster-management-io/config-policy-controller api/v1
//!   configurationpolicy_types.go (ConfigurationPolicy, ObjectTemplate),
//! - kubernetes/api core/v1/types.go again (Service, ServicePort, HTTPGetAction,
//!   EnvVarSource, ObjectFieldSelector),
//! - prometheus-operator/prometheus-operator pkg/apis/monitoring/v1 servicemonitor_types.go
//!   (ServiceMonitor, ServiceMonitorSpec), types.go (Endpoint, NamespaceSelector, Duration's
//!   and LabelName's patterns, RelabelConfig), prometheusrule_types.go (PrometheusRule,
//!   RuleGroup, Rule).
//!
//! An `objectDefinition` is `x-kubernetes-preserve-unknown-fields` upstream ([`S::Any`]):
//! [`check_object`] checks each one against the schema of its own kind.
//!
//! Only the fields of those types are listed that a kmod-day1 output may use plus their
//! siblings commonly set; a field outside the list fails the check, as `oc apply
//! --validate=strict` would fail it.

use serde_json::Value;

/// A schema node.
pub enum S {
    Str,
    /// A string from a fixed set (Go string constants).
    Enum(&'static [&'static str]),
    Int,
    Bool,
    /// intstr.IntOrString.
    IntOrStr,
    /// resource.Quantity, serialized as a string.
    Quantity,
    /// map[string]T.
    Map(Box<S>),
    List(Box<S>),
    /// Fields: (json name, schema, required).
    Obj(Vec<(&'static str, S, bool)>),
    /// Any JSON value (`x-kubernetes-preserve-unknown-fields`).
    Any,
    /// A string matching a kubebuilder `Pattern`, checked by hand: (what it is, the check).
    Pattern(&'static str, fn(&str) -> bool),
}

/// prometheus-operator's `Duration` (Prometheus' model.ParseDuration): `0`, or units in the
/// order y, w, d, h, m, s, ms, each at most once, each a number; the empty string too.
pub fn is_prometheus_duration(d: &str) -> bool {
    if d == "0" || d.is_empty() {
        return true;
    }
    let units = ["y", "w", "d", "h", "m", "s", "ms"];
    let mut rest = d;
    let mut next = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        // "ms" before "m": the longer unit first.
        let Some(i) = (next..units.len())
            .filter(|&i| rest.starts_with(units[i]))
            .max_by_key(|&i| units[i].len())
        else {
            return false;
        };
        rest = &rest[units[i].len()..];
        next = i + 1;
    }
    true
}

/// A Prometheus label name: `^[a-zA-Z_][a-zA-Z0-9_]*$`.
pub fn is_label_name(n: &str) -> bool {
    let mut b = n.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

use S::*;

fn opt(name: &'static str, s: S) -> (&'static str, S, bool) {
    (name, s, false)
}
fn req(name: &'static str, s: S) -> (&'static str, S, bool) {
    (name, s, true)
}
fn list(s: S) -> S {
    List(Box::new(s))
}
fn map(s: S) -> S {
    Map(Box::new(s))
}

/// Checks `v` against `s`; problems are pushed as "path: what".
pub fn check(v: &Value, s: &S, path: &str, problems: &mut Vec<String>) {
    match (s, v) {
        (Any, _) | (Str, Value::String(_)) | (Bool, Value::Bool(_)) => {}
        (Int, Value::Number(n)) if n.is_i64() => {}
        (IntOrStr, Value::String(_)) => {}
        (IntOrStr, Value::Number(n)) if n.is_i64() => {}
        (Quantity, Value::String(q)) => {
            let digits = q.trim_end_matches(|c: char| c.is_ascii_alphabetic());
            let suffix = &q[digits.len()..];
            if digits.is_empty()
                || digits.parse::<f64>().is_err()
                || !["", "m", "k", "M", "G", "T", "Ki", "Mi", "Gi", "Ti"].contains(&suffix)
            {
                problems.push(format!("{path}: {q:?} is not a quantity"));
            }
        }
        (Pattern(what, ok), Value::String(x)) => {
            if !ok(x) {
                problems.push(format!("{path}: {x:?} is not {what}"));
            }
        }
        (Enum(allowed), Value::String(x)) => {
            if !allowed.contains(&x.as_str()) {
                problems.push(format!("{path}: {x:?} is not one of {allowed:?}"));
            }
        }
        (Map(inner), Value::Object(m)) => {
            for (k, x) in m {
                check(x, inner, &format!("{path}.{k}"), problems);
            }
        }
        (List(inner), Value::Array(a)) => {
            for (i, x) in a.iter().enumerate() {
                check(x, inner, &format!("{path}[{i}]"), problems);
            }
        }
        (Obj(fields), Value::Object(m)) => {
            for k in m.keys() {
                if !fields.iter().any(|(n, _, _)| n == k) {
                    problems.push(format!("{path}: unknown field {k:?}"));
                }
            }
            for (name, schema, required) in fields {
                match m.get(*name) {
                    Some(x) => check(x, schema, &format!("{path}.{name}"), problems),
                    None if *required => problems.push(format!("{path}: {name} is required")),
                    None => {}
                }
            }
        }
        (_, other) => problems.push(format!("{path}: wrong type: {other}")),
    }
}

fn object_meta() -> S {
    Obj(vec![
        opt("name", Str),
        opt("generateName", Str),
        opt("namespace", Str),
        opt("labels", map(Str)),
        opt("annotations", map(Str)),
        opt("finalizers", list(Str)),
    ])
}

fn type_meta(
    api_version: &'static [&'static str],
    kind: &'static [&'static str],
) -> Vec<(&'static str, S, bool)> {
    vec![
        req("apiVersion", Enum(api_version)),
        req("kind", Enum(kind)),
        req("metadata", object_meta()),
    ]
}

fn label_selector() -> S {
    Obj(vec![
        opt("matchLabels", map(Str)),
        opt(
            "matchExpressions",
            list(Obj(vec![
                req("key", Str),
                req("operator", Enum(&["In", "NotIn", "Exists", "DoesNotExist"])),
                opt("values", list(Str)),
            ])),
        ),
    ])
}

fn probe() -> S {
    Obj(vec![
        opt("exec", Obj(vec![opt("command", list(Str))])),
        opt(
            "httpGet",
            Obj(vec![
                opt("path", Str),
                req("port", IntOrStr),
                opt("host", Str),
                opt("scheme", Enum(&["HTTP", "HTTPS"])),
                opt(
                    "httpHeaders",
                    list(Obj(vec![req("name", Str), req("value", Str)])),
                ),
            ]),
        ),
        opt("initialDelaySeconds", Int),
        opt("timeoutSeconds", Int),
        opt("periodSeconds", Int),
        opt("successThreshold", Int),
        opt("failureThreshold", Int),
        opt("terminationGracePeriodSeconds", Int),
    ])
}

fn container() -> S {
    Obj(vec![
        req("name", Str),
        opt("image", Str),
        opt("command", list(Str)),
        opt("args", list(Str)),
        opt("workingDir", Str),
        opt(
            "env",
            list(Obj(vec![
                req("name", Str),
                opt("value", Str),
                opt(
                    "valueFrom",
                    Obj(vec![opt(
                        "fieldRef",
                        Obj(vec![opt("apiVersion", Str), req("fieldPath", Str)]),
                    )]),
                ),
            ])),
        ),
        opt(
            "ports",
            list(Obj(vec![
                opt("name", Str),
                opt("hostPort", Int),
                req("containerPort", Int),
                opt("protocol", Enum(&["TCP", "UDP", "SCTP"])),
                opt("hostIP", Str),
            ])),
        ),
        opt(
            "resources",
            Obj(vec![
                opt("limits", map(Quantity)),
                opt("requests", map(Quantity)),
            ]),
        ),
        opt(
            "volumeMounts",
            list(Obj(vec![
                req("name", Str),
                opt("readOnly", Bool),
                req("mountPath", Str),
                opt("subPath", Str),
                opt(
                    "mountPropagation",
                    Enum(&["None", "HostToContainer", "Bidirectional"]),
                ),
            ])),
        ),
        opt("livenessProbe", probe()),
        opt("readinessProbe", probe()),
        opt("startupProbe", probe()),
        opt("terminationMessagePath", Str),
        opt(
            "terminationMessagePolicy",
            Enum(&["File", "FallbackToLogsOnError"]),
        ),
        opt(
            "imagePullPolicy",
            Enum(&["Always", "Never", "IfNotPresent"]),
        ),
        opt(
            "securityContext",
            Obj(vec![
                opt(
                    "capabilities",
                    Obj(vec![opt("add", list(Str)), opt("drop", list(Str))]),
                ),
                opt("privileged", Bool),
                opt("runAsUser", Int),
                opt("runAsGroup", Int),
                opt("runAsNonRoot", Bool),
                opt("readOnlyRootFilesystem", Bool),
                opt("allowPrivilegeEscalation", Bool),
            ]),
        ),
    ])
}

fn duration() -> S {
    Pattern("a Prometheus duration", is_prometheus_duration)
}

/// prometheus-operator's `Endpoint` (the fields a plain HTTP scrape may use).
fn monitor_endpoint() -> S {
    let label_name = || Pattern("a label name", is_label_name);
    let relabel = || {
        Obj(vec![
            opt("sourceLabels", list(label_name())),
            opt("separator", Str),
            opt("targetLabel", Str),
            opt("regex", Str),
            opt("modulus", Int),
            opt("replacement", Str),
            opt(
                "action",
                Enum(&[
                    "replace",
                    "Replace",
                    "keep",
                    "Keep",
                    "drop",
                    "Drop",
                    "hashmod",
                    "HashMod",
                    "labelmap",
                    "LabelMap",
                    "labeldrop",
                    "LabelDrop",
                    "labelkeep",
                    "LabelKeep",
                    "lowercase",
                    "Lowercase",
                    "uppercase",
                    "Uppercase",
                    "keepequal",
                    "KeepEqual",
                    "dropequal",
                    "DropEqual",
                ]),
            ),
        ])
    };
    Obj(vec![
        opt("port", Str),
        opt("targetPort", IntOrStr),
        opt("path", Str),
        opt("scheme", Enum(&["http", "https"])),
        opt("params", map(list(Str))),
        opt("interval", duration()),
        opt("scrapeTimeout", duration()),
        opt("honorLabels", Bool),
        opt("honorTimestamps", Bool),
        opt("metricRelabelings", list(relabel())),
        opt("relabelings", list(relabel())),
        opt("followRedirects", Bool),
        opt("enableHttp2", Bool),
        opt("filterRunning", Bool),
    ])
}

fn volume() -> S {
    Obj(vec![
        req("name", Str),
        opt(
            "hostPath",
            Obj(vec![
                req("path", Str),
                opt(
                    "type",
                    Enum(&[
                        "",
                        "DirectoryOrCreate",
                        "Directory",
                        "FileOrCreate",
                        "File",
                        "Socket",
                        "CharDevice",
                        "BlockDevice",
                    ]),
                ),
            ]),
        ),
        opt(
            "configMap",
            Obj(vec![
                opt("name", Str),
                opt(
                    "items",
                    list(Obj(vec![
                        req("key", Str),
                        req("path", Str),
                        opt("mode", Int),
                    ])),
                ),
                opt("defaultMode", Int),
                opt("optional", Bool),
            ]),
        ),
        opt(
            "emptyDir",
            Obj(vec![opt("medium", Str), opt("sizeLimit", Quantity)]),
        ),
    ])
}

fn pod_spec() -> S {
    Obj(vec![
        opt("volumes", list(volume())),
        opt("initContainers", list(container())),
        req("containers", list(container())),
        opt("restartPolicy", Enum(&["Always", "OnFailure", "Never"])),
        opt("terminationGracePeriodSeconds", Int),
        opt(
            "dnsPolicy",
            Enum(&["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"]),
        ),
        opt("nodeSelector", map(Str)),
        opt("serviceAccountName", Str),
        opt("automountServiceAccountToken", Bool),
        opt("hostNetwork", Bool),
        opt("hostPID", Bool),
        opt("hostIPC", Bool),
        opt("priorityClassName", Str),
        opt(
            "tolerations",
            list(Obj(vec![
                opt("key", Str),
                opt("operator", Enum(&["Exists", "Equal"])),
                opt("value", Str),
                opt(
                    "effect",
                    Enum(&["NoSchedule", "PreferNoSchedule", "NoExecute"]),
                ),
                opt("tolerationSeconds", Int),
            ])),
        ),
    ])
}

fn policy_dependency() -> S {
    Obj(vec![
        req("apiVersion", Str),
        req("kind", Str),
        req("name", Str),
        opt("namespace", Str),
        req(
            "compliance",
            Enum(&["Compliant", "Pending", "NonCompliant"]),
        ),
    ])
}

const REMEDIATION: &[&str] = &["Inform", "inform", "Enforce", "enforce"];

fn object_template() -> S {
    Obj(vec![
        req(
            "complianceType",
            Enum(&[
                "MustHave",
                "Musthave",
                "musthave",
                "MustOnlyHave",
                "Mustonlyhave",
                "mustonlyhave",
                "MustNotHave",
                "Mustnothave",
                "mustnothave",
            ]),
        ),
        opt(
            "metadataComplianceType",
            Enum(&[
                "MustHave",
                "Musthave",
                "musthave",
                "MustOnlyHave",
                "Mustonlyhave",
                "mustonlyhave",
            ]),
        ),
        opt("recreateOption", Enum(&["None", "IfRequired", "Always"])),
        req("objectDefinition", Any),
        opt("recordDiff", Enum(&["Log", "InStatus", "None"])),
        opt("objectSelector", label_selector()),
    ])
}

/// The schema of an object by its kind.
pub fn schema_of(kind: &str) -> Option<S> {
    Some(match kind {
        "Policy" => Obj({
            let mut f = type_meta(&["policy.open-cluster-management.io/v1"], &["Policy"]);
            f.push(req(
                "spec",
                Obj(vec![
                    req("disabled", Bool),
                    opt("copyPolicyMetadata", Bool),
                    opt("remediationAction", Enum(REMEDIATION)),
                    req(
                        "policy-templates",
                        list(Obj(vec![
                            req("objectDefinition", Any),
                            opt("extraDependencies", list(policy_dependency())),
                            opt("ignorePending", Bool),
                        ])),
                    ),
                    opt("dependencies", list(policy_dependency())),
                    opt(
                        "hubTemplateOptions",
                        Obj(vec![opt("serviceAccountName", Str)]),
                    ),
                ]),
            ));
            f
        }),
        "PlacementBinding" => Obj({
            let mut f = type_meta(
                &["policy.open-cluster-management.io/v1"],
                &["PlacementBinding"],
            );
            f.push(req(
                "placementRef",
                Obj(vec![
                    req(
                        "apiGroup",
                        Enum(&[
                            "apps.open-cluster-management.io",
                            "cluster.open-cluster-management.io",
                        ]),
                    ),
                    req("kind", Enum(&["PlacementRule", "Placement"])),
                    req("name", Str),
                ]),
            ));
            f.push(req(
                "subjects",
                list(Obj(vec![
                    req("apiGroup", Enum(&["policy.open-cluster-management.io"])),
                    req("kind", Enum(&["Policy", "PolicySet"])),
                    req("name", Str),
                ])),
            ));
            f.push(opt(
                "bindingOverrides",
                Obj(vec![opt(
                    "remediationAction",
                    Enum(&["Enforce", "enforce"]),
                )]),
            ));
            f.push(opt("subFilter", Enum(&["restricted"])));
            f
        }),
        "Placement" => Obj({
            let mut f = type_meta(
                &["cluster.open-cluster-management.io/v1beta1"],
                &["Placement"],
            );
            f.push(req(
                "spec",
                Obj(vec![
                    opt("clusterSets", list(Str)),
                    opt("numberOfClusters", Int),
                    opt(
                        "predicates",
                        list(Obj(vec![opt(
                            "requiredClusterSelector",
                            Obj(vec![
                                opt("labelSelector", label_selector()),
                                opt("claimSelector", Obj(vec![opt("matchExpressions", Any)])),
                                opt("celSelector", Obj(vec![opt("celExpressions", list(Str))])),
                            ]),
                        )])),
                    ),
                    opt("prioritizerPolicy", Any),
                    opt("spreadPolicy", Any),
                    opt(
                        "tolerations",
                        list(Obj(vec![
                            opt("key", Str),
                            opt("operator", Enum(&["Exists", "Equal"])),
                            opt("value", Str),
                            opt(
                                "effect",
                                Enum(&["NoSelect", "PreferNoSelect", "NoSelectIfNew"]),
                            ),
                            opt("tolerationSeconds", Int),
                        ])),
                    ),
                    opt("decisionStrategy", Any),
                ]),
            ));
            f
        }),
        "ConfigurationPolicy" => Obj({
            let mut f = type_meta(
                &["policy.open-cluster-management.io/v1"],
                &["ConfigurationPolicy"],
            );
            let interval = || Obj(vec![opt("compliant", Str), opt("noncompliant", Str)]);
            f.push(req(
                "spec",
                Obj(vec![
                    opt("customMessage", interval()),
                    opt(
                        "severity",
                        Enum(&[
                            "low", "Low", "medium", "Medium", "high", "High", "critical",
                            "Critical",
                        ]),
                    ),
                    req("remediationAction", Enum(REMEDIATION)),
                    opt("evaluationInterval", interval()),
                    opt(
                        "pruneObjectBehavior",
                        Enum(&["DeleteAll", "DeleteIfCreated", "None"]),
                    ),
                    opt("namespaceSelector", Any),
                    opt("object-templates", list(object_template())),
                    opt("object-templates-raw", Str),
                ]),
            ));
            f
        }),
        "MachineConfig" => Obj({
            let mut f = type_meta(
                &["machineconfiguration.openshift.io/v1"],
                &["MachineConfig"],
            );
            f.push(opt(
                "spec",
                Obj(vec![
                    opt("osImageURL", Str),
                    opt("baseOSExtensionsContainerImage", Str),
                    opt("config", Any),
                    opt("kernelArguments", list(Str)),
                    opt("extensions", list(Str)),
                    opt("fips", Bool),
                    opt("kernelType", Str),
                ]),
            ));
            f
        }),
        "MachineConfigPool" => Obj({
            let mut f = type_meta(
                &["machineconfiguration.openshift.io/v1"],
                &["MachineConfigPool"],
            );
            f.push(opt("spec", Any));
            f.push(opt(
                "status",
                Obj(vec![
                    opt("observedGeneration", Int),
                    opt(
                        "configuration",
                        Obj(vec![
                            opt("name", Str),
                            opt(
                                "source",
                                list(Obj(vec![
                                    opt("apiVersion", Str),
                                    opt("kind", Str),
                                    opt("name", Str),
                                    opt("namespace", Str),
                                    opt("uid", Str),
                                    opt("resourceVersion", Str),
                                    opt("fieldPath", Str),
                                ])),
                            ),
                        ]),
                    ),
                    opt("machineCount", Int),
                    opt("updatedMachineCount", Int),
                    opt("readyMachineCount", Int),
                    opt("unavailableMachineCount", Int),
                    opt("degradedMachineCount", Int),
                    opt("conditions", Any),
                ]),
            ));
            f
        }),
        "Namespace" => Obj({
            let mut f = type_meta(&["v1"], &["Namespace"]);
            f.push(opt("spec", Obj(vec![opt("finalizers", list(Str))])));
            f
        }),
        "ServiceAccount" => Obj({
            let mut f = type_meta(&["v1"], &["ServiceAccount"]);
            f.push(opt("automountServiceAccountToken", Bool));
            f.push(opt("imagePullSecrets", list(Obj(vec![opt("name", Str)]))));
            f
        }),
        "RoleBinding" => Obj({
            let mut f = type_meta(&["rbac.authorization.k8s.io/v1"], &["RoleBinding"]);
            f.push(opt(
                "subjects",
                list(Obj(vec![
                    req("kind", Enum(&["ServiceAccount", "User", "Group"])),
                    opt("apiGroup", Str),
                    req("name", Str),
                    opt("namespace", Str),
                ])),
            ));
            f.push(req(
                "roleRef",
                Obj(vec![
                    req("apiGroup", Str),
                    req("kind", Enum(&["Role", "ClusterRole"])),
                    req("name", Str),
                ]),
            ));
            f
        }),
        "ConfigMap" => Obj({
            let mut f = type_meta(&["v1"], &["ConfigMap"]);
            f.push(opt("immutable", Bool));
            f.push(opt("data", map(Str)));
            f.push(opt("binaryData", map(Str)));
            f
        }),
        "Service" => Obj({
            let mut f = type_meta(&["v1"], &["Service"]);
            f.push(opt(
                "spec",
                Obj(vec![
                    opt(
                        "ports",
                        list(Obj(vec![
                            opt("name", Str),
                            opt("protocol", Enum(&["TCP", "UDP", "SCTP"])),
                            opt("appProtocol", Str),
                            req("port", Int),
                            opt("targetPort", IntOrStr),
                            opt("nodePort", Int),
                        ])),
                    ),
                    opt("selector", map(Str)),
                    opt("clusterIP", Str),
                    opt("clusterIPs", list(Str)),
                    opt(
                        "type",
                        Enum(&["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]),
                    ),
                    opt("publishNotReadyAddresses", Bool),
                    opt("sessionAffinity", Enum(&["ClientIP", "None"])),
                    opt("internalTrafficPolicy", Enum(&["Cluster", "Local"])),
                    opt(
                        "ipFamilyPolicy",
                        Enum(&["SingleStack", "PreferDualStack", "RequireDualStack"]),
                    ),
                    opt("ipFamilies", list(Enum(&["IPv4", "IPv6"]))),
                ]),
            ));
            f
        }),
        "ServiceMonitor" => Obj({
            let mut f = type_meta(&["monitoring.coreos.com/v1"], &["ServiceMonitor"]);
            f.push(req(
                "spec",
                Obj(vec![
                    opt("jobLabel", Str),
                    opt("targetLabels", list(Str)),
                    opt("podTargetLabels", list(Str)),
                    opt("endpoints", list(monitor_endpoint())),
                    req("selector", label_selector()),
                    opt(
                        "namespaceSelector",
                        Obj(vec![opt("any", Bool), opt("matchNames", list(Str))]),
                    ),
                    opt("sampleLimit", Int),
                    opt("targetLimit", Int),
                    opt("labelLimit", Int),
                    opt("labelNameLengthLimit", Int),
                    opt("labelValueLengthLimit", Int),
                ]),
            ));
            f
        }),
        "PrometheusRule" => Obj({
            let mut f = type_meta(&["monitoring.coreos.com/v1"], &["PrometheusRule"]);
            f.push(req(
                "spec",
                Obj(vec![opt(
                    "groups",
                    list(Obj(vec![
                        req("name", Str),
                        opt("interval", duration()),
                        opt(
                            "rules",
                            list(Obj(vec![
                                opt("record", Str),
                                opt("alert", Str),
                                req("expr", IntOrStr),
                                opt("for", duration()),
                                opt("labels", map(Str)),
                                opt("annotations", map(Str)),
                            ])),
                        ),
                        opt(
                            "partial_response_strategy",
                            Enum(&["", "abort", "warn", "Abort", "Warn"]),
                        ),
                        opt("limit", Int),
                    ])),
                )]),
            ));
            f
        }),
        "DaemonSet" => Obj({
            let mut f = type_meta(&["apps/v1"], &["DaemonSet"]);
            f.push(req(
                "spec",
                Obj(vec![
                    req("selector", label_selector()),
                    req(
                        "template",
                        Obj(vec![
                            opt("metadata", object_meta()),
                            opt("spec", pod_spec()),
                        ]),
                    ),
                    opt(
                        "updateStrategy",
                        Obj(vec![
                            opt("type", Enum(&["RollingUpdate", "OnDelete"])),
                            opt(
                                "rollingUpdate",
                                Obj(vec![
                                    opt("maxUnavailable", IntOrStr),
                                    opt("maxSurge", IntOrStr),
                                ]),
                            ),
                        ]),
                    ),
                    opt("minReadySeconds", Int),
                    opt("revisionHistoryLimit", Int),
                ]),
            ));
            f
        }),
        "MachineConfiguration" => Obj({
            let mut f = type_meta(&["operator.openshift.io/v1"], &["MachineConfiguration"]);
            let action = || {
                Obj(vec![
                    req(
                        "type",
                        Enum(&[
                            "Reboot",
                            "Drain",
                            "Reload",
                            "Restart",
                            "DaemonReload",
                            "None",
                        ]),
                    ),
                    opt("reload", Obj(vec![req("serviceName", Str)])),
                    opt("restart", Obj(vec![req("serviceName", Str)])),
                ])
            };
            f.push(req(
                "spec",
                Obj(vec![opt(
                    "nodeDisruptionPolicy",
                    Obj(vec![
                        opt(
                            "files",
                            list(Obj(vec![req("path", Str), req("actions", list(action()))])),
                        ),
                        opt(
                            "units",
                            list(Obj(vec![req("name", Str), req("actions", list(action()))])),
                        ),
                        opt("sshkey", Obj(vec![req("actions", list(action()))])),
                    ]),
                )]),
            ));
            f
        }),
        _ => return None,
    })
}

/// Checks one object against the schema of its kind, and each object it carries (a Policy's
/// templates, a ConfigurationPolicy's object definitions) against its own; returns the problems.
pub fn check_object(v: &Value) -> Vec<String> {
    let kind = v["kind"].as_str().unwrap_or("");
    let Some(s) = schema_of(kind) else {
        return vec![format!("no schema for kind {kind:?}")];
    };
    let mut problems = vec![];
    check(v, &s, kind, &mut problems);
    let carried: Vec<&Value> = match kind {
        "Policy" => v["spec"]["policy-templates"]
            .as_array()
            .map(|a| a.iter().map(|t| &t["objectDefinition"]).collect())
            .unwrap_or_default(),
        "ConfigurationPolicy" => {
            let spec = &v["spec"];
            if spec.get("object-templates").is_some() == spec.get("object-templates-raw").is_some()
            {
                problems.push(format!(
                    "ConfigurationPolicy {}: exactly one of object-templates and object-templates-raw",
                    v["metadata"]["name"]
                ));
            }
            spec["object-templates"]
                .as_array()
                .map(|a| a.iter().map(|t| &t["objectDefinition"]).collect())
                .unwrap_or_default()
        }
        _ => vec![],
    };
    for c in carried {
        for p in check_object(c) {
            problems.push(format!("{kind} {}: {p}", v["metadata"]["name"]));
        }
    }
    problems
}
