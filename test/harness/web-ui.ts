// Drives the Temporal Web UI that the dev server serves, as an operator would: Debian's chromium,
// headless, through playwright-core (no browser download: the binary comes from apt, see
// scripts/install-deps.sh). Every method is one thing an operator does or reads on a page.
import { chromium, type Browser, type Locator, type Page } from 'playwright-core';
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { repoRoot } from './paths';

/** Debian's chromium; FERMATA_CHROMIUM names another binary. */
const chromiumPath = process.env.FERMATA_CHROMIUM ?? '/usr/bin/chromium';

/** Screenshots outlive the test run's directory, for a person to look at (ignored by git with .test-data/). */
export const screenshotRoot = path.join(repoRoot, '.test-data', 'screenshots');

const launchArgs = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
];

const NAMESPACE = 'default';
/** How long the UI may take to show what the server already knows (it polls, visibility lags). */
const SHOWS_WITHIN_MS = 30_000;

export interface StartForm {
  workflowId: string;
  workflowType: string;
  taskQueue: string;
  /** The Input field's text, exactly as an operator pastes it. */
  input: string;
  /** The form's Encoding choice; json/plain unless told. */
  encoding?: 'json/plain' | 'json/protobuf';
}

export class WebUi {
  private shots = 0;
  private readonly opened = Date.now();

  private constructor(
    private readonly browser: Browser,
    readonly page: Page,
    private readonly baseUrl: string,
    /** Where this test file's screenshots go, numbered in the order they were taken. */
    readonly screenshotDir: string,
  ) {}

  static async open(baseUrl: string, name: string): Promise<WebUi> {
    if (!existsSync(chromiumPath)) throw new Error(`chromium is not installed at ${chromiumPath}: run \`bash scripts/install-deps.sh\``);
    const browser = await chromium.launch({ executablePath: chromiumPath, args: launchArgs });
    const page = await browser.newPage({ viewport: { width: 1440, height: 1200 } });
    page.setDefaultTimeout(SHOWS_WITHIN_MS);
    const dir = path.join(screenshotRoot, name);
    mkdirSync(dir, { recursive: true });
    return new WebUi(browser, page, baseUrl, dir);
  }

  async close(): Promise<void> {
    await this.browser.close();
  }

  /** Save what the page shows now as `<nn>-<name>.png`; returns the file. */
  async screenshot(name: string): Promise<string> {
    const file = path.join(this.screenshotDir, `${String(++this.shots).padStart(2, '0')}-${name}.png`);
    await this.page.screenshot({ path: file });
    // FERMATA_UI_TRACE=1: when each stage was reached, to see where a slow run spends its time.
    if (process.env.FERMATA_UI_TRACE)
      console.log(`${((Date.now() - this.opened) / 1000).toFixed(1).padStart(6)} s  ${path.basename(file)}`);
    return file;
  }

  /**
   * Workflows → Start Workflow: fill the form, submit, and follow the "started" notice to the
   * workflow's page. `shot` names the screenshot of the filled-in form.
   */
  async startWorkflow(form: StartForm, shot?: string): Promise<void> {
    await this.page.goto(`${this.baseUrl}/namespaces/${NAMESPACE}/workflows`);
    await this.page.getByRole('button', { name: 'Start Workflow' }).click();
    await this.page.locator('#workflowId').fill(form.workflowId);
    await this.page.locator('#taskQueue').fill(form.taskQueue);
    await this.page.locator('#workflowType').fill(form.workflowType);
    await this.typeJson(this.page.locator('main'), form.input);
    if (form.encoding) await this.page.getByLabel(form.encoding, { exact: true }).check();
    if (shot) await this.screenshot(shot);
    await this.page.getByTestId('start-workflow-button').click();
    await this.page.getByRole('link', { name: 'Workflow started successfully' }).click();
    await this.page.getByTestId('workflow-id-heading').filter({ hasText: form.workflowId }).waitFor();
  }

  /** The workflow's page (its History tab). */
  async openWorkflow(workflowId: string): Promise<void> {
    await this.page.goto(`${this.baseUrl}/namespaces/${NAMESPACE}/workflows/${encodeURIComponent(workflowId)}`);
    await this.page.getByTestId('workflow-id-heading').filter({ hasText: workflowId }).waitFor();
  }

  /** The execution status in the page's header: Running, Completed, Failed, Terminated… */
  async status(): Promise<string> {
    return (
      await this.page
        .locator('header')
        .getByText(/^\s*(Running|Completed|Failed|Terminated|Canceled|Timed Out|Continued as New)\s*$/)
        .first()
        .innerText()
    ).trim();
  }

  /** Wait until the header shows `status` (the page refreshes a running workflow by itself). */
  async waitForStatus(status: string): Promise<void> {
    await this.until(`workflow status ${status}`, async () => (await this.status().catch(() => '')) === status);
  }

  /**
   * User Metadata → Current Details, as rendered (the UI renders the Markdown in an iframe).
   * Waits until `pattern` matches it, refreshing with the UI's own "R" shortcut.
   */
  async currentDetails(pattern: RegExp = /\S/): Promise<string> {
    await this.page.getByTestId('user-metadata-tab').click();
    const body = this.page.locator('iframe[title="output"]').contentFrame().locator('body');
    let text = '';
    await this.until(`current details matching ${pattern}`, async () => {
      text = await body.innerText({ timeout: 2000 }).catch(() => '');
      if (pattern.test(text)) return true;
      await this.page.keyboard.press('r');
      return false;
    });
    return text;
  }

  /** History → Input and Result: the Result panel's text (the result, or the failure). */
  async result(): Promise<string> {
    await this.page.getByTestId('history-tab').click();
    const panel = this.page.getByTestId('input-and-result');
    await panel.waitFor();
    return panel.innerText();
  }

  /**
   * More Actions → Send a Signal: pick `name` from the signals the worker reports, type the input,
   * submit. Returns what the menu says of the signal: its name and the description the worker reports.
   * `shot` names the screenshot of the open menu (`<shot>-menu`) and of the filled-in dialog.
   */
  async sendSignal(name: string, input: string, shot?: string): Promise<string> {
    await this.page.getByRole('button', { name: 'More Actions' }).click();
    await this.page.getByRole('menuitem', { name: 'Send a Signal' }).click();
    const dialog = this.page.getByRole('dialog', { name: 'Send a Signal' });
    await dialog.getByTestId('signal-select-button').click();
    // An option's name is the signal's name, then its description.
    const option = dialog.getByRole('option', { name: new RegExp(`^\\s*${name}(\\s|$)`) });
    const said = (await option.innerText()).replace(/\s+/g, ' ').trim();
    if (shot) await this.screenshot(`${shot}-menu`);
    await option.click();
    await this.typeJson(dialog, input);
    if (shot) await this.screenshot(shot);
    await dialog.getByRole('button', { name: 'Submit' }).click();
    await this.until('the signal sent (its dialog closed)', async () => !(await dialog.isVisible()));
    return said;
  }

  /**
   * Workflows → Add Filter → `attribute` Equal to `value` → Apply: the rows of the list, as text,
   * once one of them names `expected` (visibility lags a little: the page is reloaded until then).
   */
  async filterWorkflows(attribute: string, value: string, expected: string): Promise<string[]> {
    await this.page.goto(`${this.baseUrl}/namespaces/${NAMESPACE}/workflows`);
    await this.page.getByTestId('add-filter-button').click();
    await this.page.getByTestId('filter-search').fill(attribute);
    await this.page
      .getByRole('menuitem', { name: new RegExp(`^${attribute}\\b`) })
      .last()
      .click();
    await this.page.getByPlaceholder('Enter value...').fill(value);
    await this.page.getByRole('button', { name: 'Apply' }).click();
    await this.page.waitForURL(/[?&]query=/);
    const rows = this.page.locator('table tbody tr');
    let texts: string[] = [];
    await this.until(`workflow ${expected} in the list filtered by ${attribute} = "${value}"`, async () => {
      await this.page.getByTestId('workflow-count').waitFor();
      texts = (await rows.allInnerTexts()).map((t) => t.replace(/\s+/g, ' ').trim());
      if (texts.some((t) => t.includes(expected))) return true;
      await this.page.reload();
      return false;
    });
    return texts;
  }

  /**
   * Type JSON into the CodeMirror editor inside `scope` as a paste (the editor's auto-closing
   * brackets stay out of it), then leave the field: the UI reformats it on blur, and a click that
   * blurs it is spent on that instead of on the button it was aimed at.
   */
  private async typeJson(scope: Locator, text: string): Promise<void> {
    await scope.locator('.cm-content').first().click();
    await this.page.keyboard.insertText(text);
    await scope.getByText('(only single JSON payload supported)').click();
  }

  private async until(what: string, probe: () => Promise<boolean>, timeoutMs = SHOWS_WITHIN_MS): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!(await probe())) {
      if (Date.now() > deadline) {
        const shot = await this.screenshot('timed-out').catch(() => 'none');
        throw new Error(`the Web UI did not show ${what} within ${timeoutMs / 1000} s (screenshot: ${shot})`);
      }
      await this.page.waitForTimeout(500);
    }
  }
}
