/* machina's Cockpit page: lists the virtual machines, starts and stops them,
 * and edits their machine files. Every read and change runs the `machina`
 * binary (or reads the machine file) through the Cockpit bridge; changes ask
 * for Cockpit's superuser channel. No inline script and no eval (Cockpit's
 * CSP forbids both). */
"use strict";

(function () {
    const $ = (sel) => document.querySelector(sel);
    const el = (tag, attrs, ...children) => {
        const e = document.createElement(tag);
        for (const [k, v] of Object.entries(attrs || {})) {
            if (k === "class") e.className = v;
            else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
            else if (v !== null && v !== undefined && v !== false) e.setAttribute(k, v === true ? "" : v);
        }
        for (const c of children) {
            if (c === null || c === undefined) continue;
            e.append(c instanceof Node ? c : String(c));
        }
        return e;
    };

    /* Settings: the manifest's "config", which an administrator (or the
     * browser test) overrides with /etc/cockpit/machina.override.json. */
    const settings = {
        machina: "machina",
        "config-dir": "",
        "plan-dir": "",
        "unit-dir": "",
        "gen-root": "",
        "poll-seconds": 5,
    };
    let admin = false;
    let hostTags = [];
    let machines = [];
    let pollTimer = null;

    function globalArgs() {
        const a = [];
        for (const k of ["config-dir", "plan-dir", "unit-dir"])
            if (settings[k]) a.push("--" + k, settings[k]);
        return a;
    }
    function configDir() {
        return settings["config-dir"] || "/etc/machina";
    }
    function machineFile(name) {
        return configDir() + "/machine.conf.d/" + name + ".conf.json";
    }

    /* Runs a process; resolves to {ok, out, err, status} and never rejects,
     * because machina reports problems on stdout (--json) with exit 1. */
    function run(argv, opts) {
        opts = opts || {};
        return new Promise((resolve) => {
            const proc = cockpit.spawn(argv, { superuser: "try", err: "message", ...opts.spawn });
            proc.then(
                (out, err) => resolve({ ok: true, out: out || "", err: err || "", status: 0 }),
                (ex, out) => resolve({
                    ok: false,
                    out: out || "",
                    err: ex.message || ex.problem || String(ex),
                    status: ex.exit_status === undefined ? null : ex.exit_status,
                    problem: ex.problem || null,
                }));
            if (opts.input !== undefined) proc.input(opts.input);
        });
    }
    function machina(args, opts) {
        return run([settings.machina, ...globalArgs(), ...args], opts);
    }
    function parseJson(text) {
        try {
            return JSON.parse(text);
        } catch (e) {
            return null;
        }
    }

    function showError(text) {
        const box = $("#global-error");
        box.textContent = text || "";
        box.hidden = !text;
    }

    /* ---- Overview ---- */

    /* The simple state of a `list --json` row. */
    function simpleState(m) {
        if (m.error) return "broken";
        const u = m.unit;
        if (!u) return "unknown";
        if (u["load-state"] === "not-found") return "not generated";
        switch (u["active-state"]) {
        case "active": return "running";
        case "activating": return "starting";
        case "deactivating": return "stopping";
        case "failed": return "failed";
        case "inactive": return "stopped";
        default: return u["active-state"] || "unknown";
        }
    }
    function since(m) {
        const s = m.unit && m.unit.since;
        return s ? new Date(s * 1000).toLocaleString() : "";
    }

    let tagsByMachine = {};

    async function refreshList() {
        const r = await machina(["list", "--json"]);
        const data = parseJson(r.out);
        if (!data) {
            showError("machina list --json failed: " + r.err);
            return;
        }
        machines = data.machines || [];
        $("#systemd-note").textContent = data.note || "";
        const cat = await machina(["cat", "--json", ...machines.filter(m => !m.error).map(m => m.name)]);
        const cats = parseJson(cat.out) || [];
        tagsByMachine = {};
        for (const c of cats) tagsByMachine[c.name] = c;
        renderList();
        if (currentVm()) renderVmState();
    }

    function renderList() {
        const body = $("#vms tbody");
        body.replaceChildren();
        for (const m of machines) {
            const state = simpleState(m);
            const c = tagsByMachine[m.name] || {};
            const changed = m["config-changed-since-gen"];
            const running = state === "running" || state === "starting";
            body.append(el("tr", { "data-name": m.name },
                el("td", { "data-label": "name" }, el("a", { href: "#/vm/" + encodeURIComponent(m.name) }, m.name)),
                el("td", { "data-label": "state", class: "state-" + state }, state),
                el("td", { "data-label": "description" }, m.error ? m.error : m.description),
                el("td", { "data-label": "tags" }, ...(c.tags || []).map(t => el("span", { class: "label" }, t))),
                el("td", { "data-label": "uid" }, m.unit && m.unit["main-uid"] != null ? m.unit["main-uid"] : ""),
                el("td", { "data-label": "since" }, since(m)),
                el("td", { "data-label": "changed" }, changed === true ? "changed since gen" : changed === false ? "generated" : "not generated"),
                el("td", { class: "admin" },
                    el("button", {
                        type: "button", class: "pf-c-button pf-m-secondary pf-m-small",
                        disabled: !admin || m.error, onclick: () => lifecycle(running ? "stop" : "start", m.name)
                    }, running ? "Stop" : "Start"))));
        }
    }

    function schedulePoll() {
        clearTimeout(pollTimer);
        // A timer after each completed refresh: never overlapping, no busy loop,
        // paused while the page is hidden.
        pollTimer = setTimeout(async () => {
            if (!cockpit.hidden) await refreshList();
            schedulePoll();
        }, Math.max(1, Number(settings["poll-seconds"]) || 5) * 1000);
    }

    async function lifecycle(action, name) {
        const args = [action];
        if (action === "shutdown") {
            const t = $("#shutdown-timeout").value.trim();
            if (t) args.push("--timeout", t);
        }
        args.push(name);
        const box = $("#action-result");
        const r = await machina(args);
        box.className = "pf-c-alert " + (r.ok ? "pf-m-success" : "pf-m-danger");
        box.textContent = "machina " + args.join(" ") + ": " + (r.ok ? "done" : "failed") + "\n" + (r.out + r.err).trim();
        box.hidden = !currentVm();
        if (!r.ok && !currentVm()) showError(box.textContent);
        await refreshList();
    }

    /* ---- A VM's page ---- */

    let vm = null; // {name, path, text, tag, obj, indent, newline}

    /* A machine name as machina accepts it: it becomes part of file paths
     * written as root, so nothing else (no "/", no "..") gets through. */
    const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

    function currentVm() {
        const p = cockpit.location.path;
        if (p.length !== 2 || p[0] !== "vm") return null;
        if (!NAME.test(p[1]) || p[1].includes("..")) {
            showError("Not a machine name: " + p[1]);
            return null;
        }
        return p[1];
    }

    function renderVmState() {
        const m = machines.find(x => x.name === vm?.name);
        if (!m) return;
        const state = simpleState(m);
        $("#vm-state").textContent = state;
        $("#vm-state").className = "state state-" + state;
    }

    async function showVm(name) {
        $("#overview").hidden = true;
        $("#vm").hidden = false;
        $("#vm-title").textContent = name;
        $("#vm-crumb").textContent = name;
        $("#action-result").hidden = true;
        $("#review-panel").hidden = true;
        $("#apply-result").hidden = true;
        clearErrors($("#editor"));
        vm = { name, path: machineFile(name) };
        $("#file-path").textContent = vm.path;
        renderVmState();
        await Promise.all([loadFile(), loadInspect(name), loadArgs(name), loadLogs(name)]);
    }

    function loadFile() {
        return new Promise((resolve) => {
            cockpit.file(vm.path, { superuser: "try" }).read().then((text, tag) => {
                if (text === null) {
                    showError("No machine file " + vm.path);
                    return resolve();
                }
                setFile(text, tag);
                resolve();
            }, (ex) => {
                showError("Cannot read " + vm.path + ": " + cockpit.message(ex));
                resolve();
            });
        });
    }

    function setFile(text, tag) {
        vm.text = text;
        vm.tag = tag;
        vm.obj = parseJson(text) || {};
        const ind = /\n([ \t]+)"/.exec(text);
        vm.indent = ind ? ind[1] : "\t";
        vm.newline = text.endsWith("\n");
        fillForm(vm.obj);
    }

    function fillForm(o) {
        const attrs = o.attrs || {};
        $("#f-description").value = o.description || "";
        renderTagChoices($("#f-tags"), o.tags || [], "f-tag-");
        $("#f-ram").value = attrs.memory?.ram ?? "";
        $("#f-sockets").value = attrs.cpu?.sockets ?? "";
        $("#f-cores").value = attrs.cpu?.cores ?? "";
        $("#f-threads").value = attrs.cpu?.threads ?? "";
        $("#f-tpm").checked = !!attrs.tpm?.enabled;
        // What machina uses when a field is empty (from tags or defaults).
        const eff = tagsByMachine[vm.name] || {};
        const hint = (input, v) => {
            input.placeholder = v ? String(v) : "";
            input.title = v ? "Empty: " + v + " from the tags or machina's default" : "";
        };
        hint($("#f-ram"), eff["ram-mib"]);
        for (const k of ["sockets", "cores", "threads"]) hint($("#f-" + k), eff.cpu && eff.cpu[k]);
        $("#f-vars").value = Object.entries(o.vars || {}).map(([k, v]) => k + "=" + v).join("\n");
        for (const k of ["volumes", "connections", "devices"])
            $("#f-" + k).value = o[k] === undefined ? "" : JSON.stringify(o[k], null, 2);
    }

    function renderTagChoices(box, selected, prefix) {
        box.replaceChildren();
        const all = [...new Set([...hostTags, ...selected])];
        for (const t of all) {
            const id = prefix + t;
            box.append(el("label", { for: id },
                el("input", { type: "checkbox", id, value: t, checked: selected.includes(t), disabled: !admin }),
                hostTags.includes(t) ? t : t + " (not in the host file)"));
        }
        if (!all.length) box.append(el("span", { class: "muted" }, "The host file defines no tags."));
    }
    function chosenTags(box) {
        return [...box.querySelectorAll("input:checked")].map(i => i.value);
    }

    /* A number typed as digits becomes a JSON number; anything else is kept
     * as typed so that machina check names the problem. */
    function numberOrText(s) {
        s = s.trim();
        if (s === "") return undefined;
        return /^[0-9]+$/.test(s) ? Number(s) : s;
    }
    function setPath(obj, path, value) {
        let o = obj;
        for (const k of path.slice(0, -1)) {
            if (typeof o[k] !== "object" || o[k] === null) {
                if (value === undefined) return;
                o[k] = {};
            }
            o = o[k];
        }
        const last = path[path.length - 1];
        if (value === undefined) delete o[last];
        else o[last] = value;
    }

    /* The edited machine file as text, formatted like the original (its
     * indentation, key order and final newline), plus local problems. */
    function editedText() {
        const o = JSON.parse(JSON.stringify(vm.obj));
        const problems = [];
        const desc = $("#f-description").value;
        if (desc !== "" || o.description !== undefined) o.description = desc;
        const tags = chosenTags($("#f-tags"));
        if (tags.length || o.tags !== undefined) o.tags = tags;
        setPath(o, ["attrs", "memory", "ram"], numberOrText($("#f-ram").value));
        for (const k of ["sockets", "cores", "threads"])
            setPath(o, ["attrs", "cpu", k], numberOrText($("#f-" + k).value));
        const tpm = $("#f-tpm").checked;
        if (tpm || o.attrs?.tpm?.enabled !== undefined) setPath(o, ["attrs", "tpm", "enabled"], tpm);
        const vars = {};
        for (const line of $("#f-vars").value.split("\n")) {
            if (!line.trim()) continue;
            const i = line.indexOf("=");
            if (i <= 0) problems.push({ path: "vars", message: "expected name=value: " + line });
            else vars[line.slice(0, i).trim()] = line.slice(i + 1);
        }
        if (Object.keys(vars).length || o.vars !== undefined) o.vars = vars;
        for (const k of ["volumes", "connections", "devices"]) {
            const t = $("#f-" + k).value.trim();
            if (t === "") {
                delete o[k];
                continue;
            }
            const v = parseJson(t);
            if (v === null) problems.push({ path: k, message: "not valid JSON" });
            else o[k] = v;
        }
        let text = JSON.stringify(o, null, vm.indent);
        if (vm.newline) text += "\n";
        return { text, problems };
    }

    /* Runs `machina check --json VM` against TEXT as VM's machine file, in a
     * private copy of the configuration directory (so nothing is written
     * before the text is valid). Resolves to the problems. */
    async function checkText(name, text) {
        const script = [
            "set -eu",
            "t=$(mktemp -d)",
            "trap 'rm -rf \"$t\"' EXIT",
            "mkdir \"$t/machine.conf.d\"",
            "cp \"$1/machina.conf.json\" \"$t/\"",
            "for f in \"$1\"/machine.conf.d/*.conf.json; do [ -e \"$f\" ] && cp \"$f\" \"$t/machine.conf.d/\"; done",
            "cat > \"$t/machine.conf.d/$2.conf.json\"",
            "cd \"$t\"",
            "\"$3\" --config-dir \"$t\" check --json \"$2\" || true",
        ].join("\n");
        const r = await run(["/bin/sh", "-c", script, "--", configDir(), name, settings.machina], { input: text });
        const problems = parseJson(r.out);
        if (!Array.isArray(problems))
            return [{ path: "", message: "machina check did not run: " + (r.err || r.out) }];
        // The problems name the private copy; show the real file.
        for (const p of problems) {
            p.file = machineFile(name);
            p.text = p.file + (p.line ? ":" + p.line + ":" + p.column : "") + (p.path ? ": " + p.path : "") + ": " + p.message;
        }
        return problems;
    }

    function clearErrors(form) {
        for (const f of form.querySelectorAll(".field")) {
            f.classList.remove("has-error");
            f.querySelector(".field-error").textContent = "";
        }
        for (const b of form.querySelectorAll(".pf-c-alert.pf-m-danger")) {
            b.textContent = "";
            b.hidden = true;
        }
    }

    /* Shows each problem next to the field whose JSON path it names (the
     * field's path or a path under it), the others in OTHER. */
    function showProblems(form, problems, other) {
        clearErrors(form);
        const rest = [];
        for (const p of problems) {
            const fields = [...form.querySelectorAll(".field[data-path]")];
            const path = (p.path || "").replace(/\[(\d+)\]/g, ".$1");
            const field = fields.find(f => path === f.dataset.path || path.startsWith(f.dataset.path + "."));
            if (field) {
                field.classList.add("has-error");
                const box = field.querySelector(".field-error");
                box.textContent += (box.textContent ? "\n" : "") + (p.message || p.text);
            } else {
                rest.push(p.text || p.message);
            }
        }
        other.textContent = rest.join("\n");
        other.hidden = rest.length === 0;
    }

    /* A line diff (longest common subsequence; machine files are small). */
    function diffLines(a, b) {
        const x = a.split("\n"), y = b.split("\n");
        const n = x.length, m = y.length;
        const L = Array.from({ length: n + 1 }, () => new Array(m + 1).fill(0));
        for (let i = n - 1; i >= 0; i--)
            for (let j = m - 1; j >= 0; j--)
                L[i][j] = x[i] === y[j] ? L[i + 1][j + 1] + 1 : Math.max(L[i + 1][j], L[i][j + 1]);
        const out = [];
        let i = 0, j = 0;
        while (i < n || j < m) {
            if (i < n && j < m && x[i] === y[j]) { out.push([" ", x[i]]); i++; j++; }
            else if (j < m && (i === n || L[i][j + 1] >= L[i + 1][j])) { out.push(["+", y[j]]); j++; }
            else { out.push(["-", x[i]]); i++; }
        }
        return out;
    }

    let pending = null;

    async function review(ev) {
        ev.preventDefault();
        $("#review-panel").hidden = true;
        const { text, problems } = editedText();
        const form = $("#editor");
        if (problems.length) return showProblems(form, problems, $("#other-errors"));
        const found = await checkText(vm.name, text);
        showProblems(form, found, $("#other-errors"));
        if (found.length) return;
        if (text === vm.text) {
            const o = $("#other-errors");
            o.className = "pf-c-alert pf-m-info";
            o.textContent = "No changes.";
            o.hidden = false;
            return;
        }
        pending = text;
        const d = $("#diff");
        d.replaceChildren(...diffLines(vm.text, text)
            .filter((l, k, all) => l[0] !== " " || all.slice(Math.max(0, k - 2), k + 3).some(n => n[0] !== " "))
            .map(([op, line]) => el("span", { class: op === "+" ? "add" : op === "-" ? "del" : "" }, op + " " + line + "\n")));
        // The file is rewritten as JSON with its own indentation and key
        // order; a layout of its own (one-line arrays, spacing) is not kept.
        const same = JSON.stringify(vm.obj, null, vm.indent) + (vm.newline ? "\n" : "") === vm.text;
        $("#layout-note").hidden = same;
        $("#review-panel").hidden = false;
        $("#save").focus();
    }

    function save() {
        const text = pending;
        if (text === null) return;
        cockpit.file(vm.path, { superuser: "try" }).replace(text, vm.tag).then((tag) => {
            pending = null;
            $("#review-panel").hidden = true;
            setFile(text, tag);
            const box = $("#apply-result");
            box.className = "pf-c-alert pf-m-success";
            box.textContent = "Saved " + vm.path + ". Apply runs machina gen to update the unit and launch plan.";
            box.hidden = false;
            refreshList();
        }, (ex) => {
            const o = $("#other-errors");
            o.className = "pf-c-alert pf-m-danger";
            o.textContent = ex.problem === "change-conflict"
                ? vm.path + " changed on disk since it was loaded: revert and edit again"
                : "Cannot save " + vm.path + ": " + cockpit.message(ex);
            o.hidden = false;
        });
    }

    function genArgs() {
        const a = ["gen"];
        if (settings["gen-root"]) a.push("--root", settings["gen-root"]);
        return a;
    }

    async function apply() {
        const box = $("#apply-result");
        box.hidden = true;
        // `gen --json` reports {"changed": [...], "unchanged": [...]}; an older
        // machina without it (usage error, exit 2) gets a plain `gen`.
        let r = await machina([...genArgs(), "--json", vm.name]);
        let report = parseJson(r.out);
        if (!r.ok && r.status === 2) {
            r = await machina([...genArgs(), vm.name]);
            report = null;
        }
        const m = machines.find(x => x.name === vm.name);
        const running = m && simpleState(m) === "running";
        let msg;
        if (!r.ok) {
            msg = "machina gen " + vm.name + " failed:\n" + (r.err || r.out);
        } else if (report && Array.isArray(report.changed)) {
            msg = report.changed.length
                ? "Changed:\n  " + report.changed.join("\n  ") + (running ? "\nRestart the machine for the change to take effect." : "")
                : "Nothing changed: the unit and plan were up to date.";
        } else {
            msg = "Generated the unit and launch plan of " + vm.name + "." + (r.out.trim() ? "\n" + r.out.trim() : "") +
                (running ? "\nRestart the machine for a changed configuration to take effect." : "");
        }
        box.className = "pf-c-alert " + (r.ok ? "pf-m-success" : "pf-m-danger");
        box.textContent = msg;
        box.hidden = false;
        refreshList();
    }

    async function loadInspect(name) {
        const dl = $("#inspect");
        const note = $("#inspect-note");
        dl.replaceChildren();
        // `inspect --json` is the richer view; older machina: status + cat.
        const ins = await machina(["inspect", "--json", name]);
        let rows = [];
        const data = ins.ok ? parseJson(ins.out) : null;
        if (data) {
            const o = Array.isArray(data) ? data[0] : data;
            rows = Object.entries(o).map(([k, v]) => [k, typeof v === "object" && v !== null ? JSON.stringify(v) : v]);
            note.textContent = "";
        } else {
            const st = parseJson((await machina(["status", "--json", name])).out);
            const c = (parseJson((await machina(["cat", "--json", name])).out) || [])[0] || {};
            const m = st?.machines?.[0] || {};
            const u = m.unit || {};
            rows = [
                ["State", simpleState(m)],
                ["Unit", u.unit || "—"],
                ["Since", since(m) || "—"],
                ["Main PID", u["main-pid"] || "—"],
                ["UID", u["main-uid"] ?? "—"],
                ["QMP answers", m.qmp ? "yes" : "no"],
                ["Changed since gen", m["config-changed-since-gen"] === null ? "not generated" : m["config-changed-since-gen"] ? "yes" : "no"],
                ["ID", c.id || "—"],
                ["Tags", (c.tags || []).join(", ") || "—"],
                ["RAM", c["ram-mib"] ? c["ram-mib"] + " MiB" : "—"],
                ["CPU", c.cpu ? c.cpu.sockets + " × " + c.cpu.cores + " × " + c.cpu.threads : "—"],
                ["Volumes", (c.volumes || []).map(v => v.name).join(", ") || "—"],
                ["Connections", (c.connections || []).map(v => v.name + " (" + v.mac + ")").join(", ") || "—"],
            ];
            note.textContent = "From machina status and cat (this machina has no inspect command).";
        }
        for (const [k, v] of rows) dl.append(el("dt", {}, k), el("dd", {}, v === null || v === undefined ? "—" : v));
    }

    async function loadArgs(name) {
        const r = await machina(["args", name]);
        $("#args").textContent = r.ok ? r.out : (r.err || r.out);
    }

    async function loadLogs(name) {
        const src = $("#logs-source");
        let r = await machina(["logs", "-n", "100", name]);
        if (r.ok) {
            src.textContent = "machina logs " + name;
        } else {
            // No `machina logs` yet: the unit's journal.
            r = await run(["journalctl", "--no-pager", "-n", "100", "-u", "machina-qemu-" + name + ".service"]);
            src.textContent = "journalctl -u machina-qemu-" + name + ".service";
        }
        $("#logs").textContent = (r.out || r.err || "").trim() || "(no entries)";
        // The serial console's log comes with `machina logs --console` (issue
        // 11); until then the page says where it is not.
        const c = await machina(["logs", "--console", "-n", "100", name]);
        $("#console-log").textContent = c.ok ? (c.out.trim() || "(empty)")
            : "No console log: this machina has no `logs --console` command.";
    }

    /* ---- New VM and dissolve ---- */

    function openCreate() {
        const form = $("#create-form");
        form.reset();
        clearErrors(form);
        renderTagChoices($("#c-tags"), [], "c-tag-");
        $("#create-dialog").showModal();
        $("#c-name").focus();
    }

    async function create(ev) {
        ev.preventDefault();
        const form = $("#create-form");
        const name = $("#c-name").value.trim();
        if (!NAME.test(name) || name.includes(".."))
            return showProblems(form, [{ path: "name", message: "a name is letters, digits, '.', '_' and '-'" }], $("#create-errors"));
        if (machines.some(m => m.name === name))
            return showProblems(form, [{ path: "name", message: "a machine named " + name + " exists" }], $("#create-errors"));
        const id = await machina(["gen-id"]);
        if (!id.ok) return showProblems(form, [{ text: "machina gen-id: " + id.err }], $("#create-errors"));
        const o = { id: id.out.trim() };
        const desc = $("#c-description").value;
        if (desc) o.description = desc;
        o.tags = chosenTags($("#c-tags"));
        const text = JSON.stringify(o, null, "\t") + "\n";
        const problems = await checkText(name, text);
        if (problems.length) return showProblems(form, problems, $("#create-errors"));
        // "-": the file must not exist yet.
        cockpit.file(machineFile(name), { superuser: "try" }).replace(text, "-").then(() => {
            $("#create-dialog").close();
            refreshList();
            cockpit.location.go(["vm", name]);
        }, (ex) => showProblems(form, [{ text: "Cannot write " + machineFile(name) + ": " + cockpit.message(ex) }], $("#create-errors")));
    }

    async function dissolve() {
        $("#dissolve-dialog").close();
        await lifecycle("dissolve", vm.name);
    }

    /* ---- Wiring ---- */

    function setAdmin(allowed) {
        // null while Cockpit is still asking: no changes offered, no notice yet.
        admin = allowed === true;
        $("#readonly").hidden = allowed !== false;
        for (const b of document.querySelectorAll("button.admin, .admin button, .admin input, #editor input, #editor textarea"))
            b.disabled = !admin;
        renderList();
    }

    async function route() {
        showError("");
        const name = currentVm();
        if (name) {
            await showVm(name);
        } else {
            vm = null;
            $("#vm").hidden = true;
            $("#overview").hidden = false;
        }
    }

    async function loadSettings() {
        try {
            const r = await fetch("../manifests.json", { credentials: "same-origin" });
            const all = await r.json();
            Object.assign(settings, (all.machina && all.machina.config) || {});
        } catch (e) {
            // The defaults: `machina` on PATH, /etc/machina.
        }
    }

    async function loadHostTags() {
        const r = await machina(["cat", "--json", "system"]);
        const sys = parseJson(r.out);
        const host = Array.isArray(sys) ? sys[0] : sys;
        hostTags = Object.keys((host && (host.tag || host.tags)) || {}).sort();
    }

    async function init() {
        await loadSettings();
        const perm = cockpit.permission({ admin: true });
        perm.addEventListener("changed", () => setAdmin(perm.allowed));
        setAdmin(perm.allowed);
        $("#new-vm").addEventListener("click", openCreate);
        $("#create-form").addEventListener("submit", create);
        $("#create-cancel").addEventListener("click", () => $("#create-dialog").close());
        $("#editor").addEventListener("submit", review);
        $("#save").addEventListener("click", save);
        $("#cancel-save").addEventListener("click", () => { pending = null; $("#review-panel").hidden = true; });
        $("#revert").addEventListener("click", () => { clearErrors($("#editor")); fillForm(vm.obj); });
        $("#apply").addEventListener("click", apply);
        $("#dissolve").addEventListener("click", () => {
            $("#dissolve-name").textContent = vm.name;
            $("#dissolve-dialog").showModal();
            $("#dissolve-cancel").focus();
        });
        $("#dissolve-confirm").addEventListener("click", dissolve);
        $("#dissolve-cancel").addEventListener("click", () => $("#dissolve-dialog").close());
        for (const b of document.querySelectorAll("#vm-actions [data-action]"))
            b.addEventListener("click", () => lifecycle(b.dataset.action, vm.name));
        $("#back").addEventListener("click", (ev) => { ev.preventDefault(); cockpit.location.go([]); });
        cockpit.addEventListener("locationchanged", route);
        await loadHostTags();
        await refreshList();
        await route();
        setAdmin(perm.allowed);
        document.body.dataset.ready = "1";
        schedulePoll();
    }

    init();
}());
