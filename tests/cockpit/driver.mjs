// Drives headless Chromium over the DevTools protocol on a pipe (no listening
// socket, no npm dependency) through machina's Cockpit page inside the Cockpit
// shell, and asserts on the page and on the files it changes. Run by
// tests/cockpit.rs, which starts cockpit-ws and passes:
//   MACHINA_BIN, CONFIG_DIR, GEN_ROOT, COCKPIT_URL, CHROMIUM, PROFILE_DIR,
//   SHOT_DIR (screenshots, PNG).
// Prints one "ok ..." line per assertion; exits 1 at the first failure.
import { spawn, execFileSync } from "node:child_process";
import { readFileSync, writeFileSync, existsSync } from "node:fs";
import { join } from "node:path";

const env = process.env;
const bin = env.MACHINA_BIN, cfg = env.CONFIG_DIR, genRoot = env.GEN_ROOT;
const url = env.COCKPIT_URL, shots = env.SHOT_DIR;
const t0 = Date.now();

const chrome = spawn(env.CHROMIUM, [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1280,800", "--hide-scrollbars",
    "--user-data-dir=" + env.PROFILE_DIR, "--remote-debugging-pipe", "about:blank",
], { stdio: ["ignore", "ignore", "pipe", "pipe", "pipe"] });
let chromeErr = "";
chrome.stderr.on("data", (d) => { chromeErr = (chromeErr + d).slice(-4000); });
const toChrome = chrome.stdio[3], fromChrome = chrome.stdio[4];

let nextId = 1;
const waiting = new Map();
let buf = "";
fromChrome.on("data", (d) => {
    buf += d.toString("utf8");
    let i;
    while ((i = buf.indexOf("\0")) >= 0) {
        const msg = JSON.parse(buf.slice(0, i));
        buf = buf.slice(i + 1);
        if (msg.id && waiting.has(msg.id)) {
            const { resolve, reject } = waiting.get(msg.id);
            waiting.delete(msg.id);
            msg.error ? reject(new Error(JSON.stringify(msg.error))) : resolve(msg.result);
        }
    }
});
function cdp(method, params, sessionId) {
    const id = nextId++;
    toChrome.write(JSON.stringify({ id, method, params: params || {}, sessionId }) + "\0");
    return new Promise((resolve, reject) => waiting.set(id, { resolve, reject }));
}

function finish(code, msg) {
    if (msg) console.log(msg);
    if (code && chromeErr) console.log("chromium stderr (tail):\n" + chromeErr);
    chrome.kill("SIGKILL");
    process.exit(code);
}
function fail(msg) { finish(1, "FAIL " + msg); }
function ok(msg) { console.log("ok " + msg + " (" + ((Date.now() - t0) / 1000).toFixed(1) + " s)"); }
function assertEq(a, b, what) {
    const x = JSON.stringify(a), y = JSON.stringify(b);
    if (x !== y) fail(what + ":\n  page:    " + x + "\n  machina: " + y);
    ok(what);
}
setTimeout(() => fail("no result after 120 s"), 120000);
process.on("unhandledRejection", (e) => fail("exception: " + (e && e.stack || e)));

const { targetInfos } = await cdp("Target.getTargets");
const page = targetInfos.find((t) => t.type === "page");
const { sessionId: s } = await cdp("Target.attachToTarget", { targetId: page.targetId, flatten: true });
await cdp("Runtime.enable", {}, s);
await cdp("Page.enable", {}, s);
await cdp("Emulation.setDeviceMetricsOverride", { width: 1280, height: 800, deviceScaleFactor: 1, mobile: false }, s);

// Evaluates BODY (an async function body) with `d` = the machina iframe's
// document and `w` its window, inside the Cockpit shell.
async function inFrame(body, arg) {
    const expr = `(async (arg) => {
        const f = document.querySelector('iframe[name="cockpit1:localhost/machina"]');
        const d = f && f.contentDocument, w = f && f.contentWindow;
        if (!d || !d.body || d.body.dataset.ready !== "1") return { notReady: true };
        return { value: await (async () => { ${body} })() };
    })(${JSON.stringify(arg === undefined ? null : arg)})`;
    const r = await cdp("Runtime.evaluate", { expression: expr, awaitPromise: true, returnByValue: true }, s);
    if (r.exceptionDetails) throw new Error("in page: " + JSON.stringify(r.exceptionDetails).slice(0, 800));
    return r.result.value;
}
// Waits (up to 30 s, the machine is shared) for BODY to return a truthy value.
async function waitFor(body, what, arg) {
    const end = Date.now() + 30000;
    for (;;) {
        const r = await inFrame(body, arg);
        if (r && !r.notReady && r.value) return r.value;
        if (Date.now() > end) fail("timed out waiting for " + what + "; last: " + JSON.stringify(r));
        await new Promise((res) => setTimeout(res, 100));
    }
}
async function shot(name) {
    const { data } = await cdp("Page.captureScreenshot", { format: "png" }, s);
    writeFileSync(join(shots, name), Buffer.from(data, "base64"));
    ok("screenshot " + name);
}
function machina(...args) {
    try {
        return execFileSync(bin, ["--config-dir", cfg, ...args], { encoding: "utf8" });
    } catch (e) {
        return e.stdout;
    }
}
/* What the page shows for a machina command: its output, or its error
 * message when it fails (the VM has not run here: no console log). */
function machinaSays(...args) {
    try {
        return execFileSync(bin, ["--config-dir", cfg, ...args], { encoding: "utf8", stdio: "pipe" }).trim() || "(empty)";
    } catch (e) {
        return (e.stderr || e.stdout).trim();
    }
}
const setField = `
    const e = d.querySelector(arg.sel);
    if (!e) throw new Error("no element " + arg.sel);
    e.value = arg.value;
    e.dispatchEvent(new w.Event(e.tagName === "SELECT" ? "change" : "input", { bubbles: true }));
    return true;`;

// 1. The shell loads the page in its iframe; the rows equal `list --json`.
await cdp("Page.navigate", { url: url + "/machina" }, s);
const list = JSON.parse(machina("list", "--json")).machines;
const rows = await waitFor(`
    const rows = [...d.querySelectorAll("#vms tbody tr")];
    if (!rows.length) return null;
    return rows.map(r => ({
        name: r.dataset.name,
        description: r.querySelector('[data-label="description"]').textContent,
    }));`, "the overview's rows");
assertEq(rows, list.map((m) => ({ name: m.name, description: m.description })), "overview rows equal machina list --json (inside the shell's iframe)");

// PatternFly's own stylesheet styles the page: its variables are defined
// and a primary button has PatternFly's blue, from patternfly.css.
const pf = await inFrame(`
    const sheet = [...d.styleSheets].find(x => (x.href || "").endsWith("/patternfly.css"));
    const b = d.querySelector("#new-vm");
    return {
        sheetRules: sheet ? sheet.cssRules.length > 1000 : false,
        variable: w.getComputedStyle(d.documentElement).getPropertyValue("--pf-global--primary-color--100").trim(),
        button: w.getComputedStyle(b).backgroundColor,
        table: w.getComputedStyle(d.querySelector("#vms")).getPropertyValue("--pf-c-table--cell--FontSize").trim() !== "",
    };`);
// (Read-only, the button is disabled: PatternFly's disabled grey.)
assertEq(pf.value, { sheetRules: true, variable: "#06c", button: env.READ_ONLY === "1" ? "rgb(210, 210, 210)" : "rgb(0, 102, 204)", table: true },
    "PatternFly's stylesheet is loaded (its variables, a primary button's colour, the table's own variables)");

if (env.READ_ONLY === "1") {
    // Without administrative access: the page says so and offers no change.
    const ro = await waitFor(`return !d.querySelector("#readonly").hidden && {
        newVm: d.querySelector("#new-vm").disabled,
        rowButtons: [...d.querySelectorAll("#vms tbody button")].every(b => b.disabled),
        text: d.querySelector("#readonly").textContent.trim().split("\\n")[0],
    };`, "the read-only notice");
    assertEq([ro.newVm, ro.rowButtons], [true, true], "read-only: Create and the row actions are disabled (" + ro.text + ")");
    await inFrame(`d.querySelector('a[href="#/vm/web-01"]').click(); return true;`);
    const vmRo = await waitFor(`return d.querySelector("#f-description").value === "Web front end (Debian 12)" && {
        description: d.querySelector("#f-description").disabled,
        review: d.querySelector("#review").disabled,
        apply: d.querySelector("#apply").disabled,
        start: d.querySelector('[data-action="start"]').disabled,
        dissolve: d.querySelector("#dissolve").disabled,
        addVolume: d.querySelector("#add-volume").disabled,
        volumeInputs: [...d.querySelectorAll('.list-editor[data-list="volumes"] tbody :is(input, select, button)')].every(e => e.disabled),
    };`, "web-01's page, read-only");
    assertEq(Object.values(vmRo), [true, true, true, true, true, true, true], "read-only: the editor, its list forms and the lifecycle buttons are disabled");
    finish(0, "cockpit page (read-only): all assertions passed in " + ((Date.now() - t0) / 1000).toFixed(1) + " s");
}
await shot("cockpit-overview.png");

// Live updates: a machine file added behind the page's back shows up.
writeFileSync(join(cfg, "machine.conf.d", "outside.conf.json"),
    JSON.stringify({ id: "0d1b2c3a-4e5f-4a6b-8c7d-9e0f1a2b3c4d", description: "Added outside", tags: ["server"] }, null, "\t") + "\n");
await waitFor(`return [...d.querySelectorAll("#vms tbody tr")].some(r => r.dataset.name === "outside");`, "the outside VM in the overview");
ok("live update: a machine file added outside the page appears in the overview");

// 2. A VM's page: edit the description and save; the formatting is kept.
const file = join(cfg, "machine.conf.d", "web-01.conf.json");
const before = readFileSync(file, "utf8");
await inFrame(`d.querySelector('a[href="#/vm/web-01"]').click(); return true;`);
await waitFor(`return d.querySelector("#f-description").value === "Web front end (Debian 12)" &&
    d.querySelector("#args").textContent.includes("-name web-01");`, "web-01's page");
// The inspect card, and the tabs below: journal (machina logs), console
// log (machina console --log), QEMU arguments.
// Each view loads on its own: wait until all three have.
const views = await waitFor(`return d.querySelector('[data-key="UUID"]') && d.querySelector("#logs-source").textContent &&
    d.querySelector("#console-log").textContent && {
    uuid: d.querySelector('[data-key="UUID"]').textContent,
    logs: d.querySelector("#logs-source").textContent.startsWith("machina logs -n 100 web-01"),
    console: d.querySelector("#console-log").textContent,
};`, "the inspect card and the logs");
assertEq(views, { uuid: JSON.parse(machina("inspect", "--json", "web-01"))[0].uuid, logs: true, console: machinaSays("console", "--log", "web-01") },
    "the overview card is inspect --json; the journal comes from machina logs");
const tabbed = await inFrame(`d.querySelector("#tab-args").click();
    const shown = ["logs", "console", "args"].filter(p => !d.getElementById("panel-" + p).hidden);
    d.querySelector("#tab-logs").click();
    return shown;`);
assertEq(tabbed.value, ["args"], "the QEMU arguments tab shows only its panel");
await inFrame(setField, { sel: "#f-description", value: "Web front end (edited in Cockpit)" });
await inFrame(`d.querySelector("#review").click(); return true;`);
const diff = await waitFor(`const p = d.querySelector("#review-panel"); return !p.hidden && d.querySelector("#diff").textContent;`, "the diff");
if (!diff.includes("+ \t\"description\": \"Web front end (edited in Cockpit)\",")) fail("diff lacks the new line:\n" + diff);
if (await inFrame(`return !d.querySelector("#layout-note").hidden;`).then((r) => r.value)) fail("layout note shown for a plain indented file");
ok("review shows the diff");
await inFrame(`d.querySelector("#save").click(); return true;`);
await waitFor(`const b = d.querySelector("#apply-result"); return !b.hidden && b.textContent.startsWith("Saved");`, "saved");
const after = readFileSync(file, "utf8");
assertEq(after, before.replace("Web front end (Debian 12)", "Web front end (edited in Cockpit)"), "saved file: only the description changed, formatting kept");
assertEq(JSON.parse(machina("cat", "--json", "web-01"))[0].description, "Web front end (edited in Cockpit)", "machina cat --json shows the new description");

// 2b. A volume added through the form built from `machina schema machine`:
// a row of typed inputs, the storage pool chosen from the host file's.
const vols = `.list-editor[data-list="volumes"] tbody tr`;
const volRows = await waitFor(`return d.querySelectorAll(${JSON.stringify(vols)}).length;`, "the volume rows");
assertEq(volRows, 2, "the volume form shows web-01's two volumes");
const pools = await inFrame(`d.querySelector("#add-volume").click();
    const row = d.querySelectorAll(${JSON.stringify(vols)})[2];
    return [...row.querySelector('[data-prop="storage"]').options].map(o => o.value).filter(Boolean);`);
assertEq(pools.value, Object.keys(JSON.parse(machina("cat", "--json", "system"))[0].storage), "the new volume's storage choices are the host file's pools");
const newVol = vols + `:nth-child(3)`;
await inFrame(setField, { sel: newVol + ` [data-prop="name"]`, value: "bad name" });
await inFrame(setField, { sel: newVol + ` [data-prop="storage"]`, value: "vm-disks" });
await inFrame(`d.querySelector("#review").click(); return true;`);
const volErr = await waitFor(`return d.querySelector('.field[data-path="volumes.2.name"] .field-error').textContent;`, "the volume name's error");
if (!/"bad name" is not a volume name/.test(volErr)) fail("unexpected volume name error: " + volErr);
ok("an invalid volume name: the schema's rule next to the cell: " + volErr);
assertEq(readFileSync(file, "utf8"), after, "file unchanged after an invalid volume name");
// A problem only machina finds (a second volume "os"): its message, under the cell it names.
await inFrame(setField, { sel: newVol + ` [data-prop="name"]`, value: "os" });
await inFrame(`d.querySelector("#review").click(); return true;`);
const dupErr = await waitFor(`return d.querySelector('.field[data-path="volumes.2.name"] .field-error').textContent.includes("already") &&
    d.querySelector('.field[data-path="volumes.2.name"] .field-error').textContent;`, "machina's duplicate volume error");
if (!/volume "os" is already defined at volumes\[0\]/.test(dupErr)) fail("unexpected duplicate volume error: " + dupErr);
ok("a duplicate volume name: machina check's message under the cell: " + dupErr);
await inFrame(setField, { sel: newVol + ` [data-prop="name"]`, value: "scratch" });
await inFrame(`d.querySelector("#review").click(); return true;`);
const volDiff = await waitFor(`const p = d.querySelector("#review-panel"); return !p.hidden && d.querySelector("#diff").textContent;`, "the volume's diff");
if (!volDiff.includes('+ \t\t\t"name": "scratch",')) fail("diff lacks the new volume:\n" + volDiff);
await inFrame(`d.querySelector("#save").click(); return true;`);
await waitFor(`const b = d.querySelector("#apply-result"); return !b.hidden && b.textContent.startsWith("Saved") && d.querySelectorAll(${JSON.stringify(vols)}).length === 3;`, "the volume saved");
const withVol = readFileSync(file, "utf8");
assertEq(JSON.parse(withVol).volumes, [...JSON.parse(after).volumes, { name: "scratch", storage: "vm-disks" }], "saved file: the new volume, after the others");
try {
    execFileSync(bin, ["--config-dir", cfg, "check", "web-01"], { stdio: "pipe" });
} catch (e) {
    fail("machina check rejects the file with the new volume: " + e.stderr);
}
ok("machina check accepts the file with the new volume");
assertEq(JSON.parse(machina("cat", "--json", "web-01"))[0].volumes.map((v) => v.name), ["os", "data", "scratch"], "machina cat --json lists the new volume");
// The JSON view (every key, the escape hatch): the file as saved; an edit
// there shows in the form.
await inFrame(`d.querySelector("#mode-json").click(); return true;`);
const jsonText = await waitFor(`return !d.querySelector("#json-fields").hidden && d.querySelector("#f-json").value;`, "the JSON view");
assertEq(jsonText, withVol, "the JSON view holds the machine file as saved");
await inFrame(setField, { sel: "#f-json", value: withVol.replace('"queues": 4', '"queues": 2') });
await inFrame(`d.querySelector("#mode-form").click(); return true;`);
const queues = await waitFor(`return !d.querySelector("#form-fields").hidden &&
    d.querySelector('.list-editor[data-list="connections"] tbody tr input[data-prop="queues"]').value;`, "the form after the JSON view");
assertEq(queues, "2", "an edit in the JSON view shows in the form");
await inFrame(`d.querySelector("#revert").click(); return true;`);
await inFrame(`w.scrollTo(0, 0); return true;`);
await shot("cockpit-vm.png");
await inFrame(`d.querySelector("#lists").scrollIntoView(); return true;`);
await shot("cockpit-vm-lists.png");

// 3. An invalid value: machina's message next to the field, file unchanged.
await inFrame(setField, { sel: "#f-ram", value: "lots" });
await inFrame(`d.querySelector("#review").click(); return true;`);
const err = await waitFor(`return d.querySelector('.field[data-path="attrs.memory.ram"] .field-error').textContent;`, "the RAM error");
if (!/invalid type: string "lots"/.test(err)) fail("unexpected RAM error: " + err);
ok("RAM \"lots\": machina's message next to the field: " + err);
assertEq(readFileSync(file, "utf8"), withVol, "file unchanged after an invalid value");
if (await inFrame(`return !d.querySelector("#review-panel").hidden;`).then((r) => r.value)) fail("save offered despite the problem");

// 4. Apply: `gen --root` into the temporary tree writes the unit and plan.
await inFrame(`d.querySelector("#revert").click(); d.querySelector("#apply").click(); return true;`);
const applied = await waitFor(`const b = d.querySelector("#apply-result"); return !b.hidden && !b.textContent.startsWith("Saved") && b.textContent;`, "apply's result");
if (!/Generated|Changed/.test(applied)) fail("apply failed: " + applied);
const unit = join(genRoot, "etc/systemd/system/machina-qemu-web-01.service");
const plan = join(genRoot, "etc/machina/launch/web-01.json");
if (!existsSync(unit) || !existsSync(plan)) fail("apply did not write " + unit + " and " + plan);
JSON.parse(readFileSync(plan, "utf8"));
if (!readFileSync(unit, "utf8").includes("web-01")) fail("the generated unit does not name web-01");
ok("apply wrote the unit and plan under the gen root: " + applied.split("\n")[0]);

// 5. A new VM from tags.
await inFrame(`w.location.hash = "#/"; return true;`);
await waitFor(`return !d.querySelector("#overview").hidden;`, "the overview");
await inFrame(`d.querySelector("#new-vm").click(); return true;`);
await waitFor(`return d.querySelector("#create-dialog").open && d.querySelectorAll("#c-tags input").length > 0;`, "the create dialog");
await inFrame(setField, { sel: "#c-name", value: "cockpit-new" });
await inFrame(setField, { sel: "#c-description", value: "Made in Cockpit" });
await inFrame(`for (const t of ["server", "uefi"]) d.getElementById("c-tag-" + t).click(); d.querySelector("#create").click(); return true;`);
await waitFor(`return d.querySelector("#vm-title").textContent === "cockpit-new" && !d.querySelector("#vm").hidden;`, "the new VM's page");
const made = JSON.parse(readFileSync(join(cfg, "machine.conf.d", "cockpit-new.conf.json"), "utf8"));
if (!/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(made.id)) fail("new VM's id is not a UUID: " + made.id);
assertEq([made.description, made.tags], ["Made in Cockpit", ["server", "uefi"]], "new machine file from tags");
try {
    execFileSync(bin, ["--config-dir", cfg, "check", "cockpit-new"], { stdio: "pipe" });
} catch (e) {
    fail("machina check rejects the new machine file: " + e.stderr);
}
ok("machina check accepts the new machine file");
const rows2 = await waitFor(`return [...d.querySelectorAll("#vms tbody tr")].map(r => r.dataset.name).includes("cockpit-new") && "yes";`, "the new VM in the overview");
ok("the overview lists the new VM: " + rows2);

// Dissolve asks first, saying the disks stay (cancelled here: without
// systemd there is nothing to dissolve).
await inFrame(`d.querySelector('a[href="#/vm/cockpit-new"]').click(); return true;`);
await waitFor(`return d.querySelector("#vm-title").textContent === "cockpit-new";`, "cockpit-new's page");
await inFrame(`d.querySelector("#dissolve").click(); return true;`);
const ask = await waitFor(`const g = d.querySelector("#dissolve-dialog"); return g.open && g.textContent.replace(/\\s+/g, " ");`, "the dissolve confirmation");
if (!/the disks stay/.test(ask) || !/cockpit-new/.test(ask)) fail("dissolve confirmation: " + ask);
await inFrame(`d.querySelector("#dissolve-cancel").click(); return true;`);
await waitFor(`return !d.querySelector("#dissolve-dialog").open;`, "the confirmation to close");
ok("dissolve asks first and says the disks stay");

// A name from the URL that is not a machine name never reaches a path.
await inFrame(`w.location.hash = "#/vm/" + encodeURIComponent("../../etc/passwd"); return true;`);
const bad = await waitFor(`const e = d.querySelector("#global-error"); return !e.hidden && e.textContent;`, "the bad-name error");
if (!/Not a machine name/.test(bad)) fail("bad name: " + bad);
ok("a path in the URL is refused: " + bad);

finish(0, "cockpit page: all assertions passed in " + ((Date.now() - t0) / 1000).toFixed(1) + " s");
